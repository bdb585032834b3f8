//! A real guest: Debian bookworm's kernel and its unmodified i915 module drive a vGPU that `shadowgpu serve`
//! serves over vfio-user to QEMU (≥ 10.1, TCG, q35, memfd RAM shared with the server), once on a Coffee
//! Lake (Gen9) software GPU and once on a Broadwell (Gen8) one. Inside, the guest program
//! tests/guest/gemtest.rs stores on every engine, blits, times 1,000 nop batches and hangs an engine that
//! i915 must reset through the vGPU; in a second boot, Debian's Mesa (iris alone) renders 100 frames
//! through EGL/GBM/GLES (tests/guest/gltest.c) with no GPU hang, reset, refused or failed workload.
//! tests/guest/assets.sh builds the kernel + initramfs from `apt-get download`.
//!
//! QEMU comes from `SHADOWGPU_QEMU` or `qemu-system-x86_64` on PATH; without a QEMU ≥ 10.1 that has
//! `vfio-user-pci` each test prints one line saying so and passes. The guest program is compiled either
//! way, so it cannot rot unnoticed.

#![cfg(feature = "vfio-user")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Everything (boot, i915, gemtest, power-off) must be done within this.
const GUEST_LIMIT: Duration = Duration::from_secs(270);

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The QEMU to use, or why there is none.
fn find_qemu() -> Result<PathBuf, String> {
    let candidate = match std::env::var_os("SHADOWGPU_QEMU") {
        Some(p) => PathBuf::from(p),
        None => std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join("qemu-system-x86_64")).find(|p| p.is_file()))
            .ok_or("no qemu-system-x86_64 on PATH and SHADOWGPU_QEMU unset")?,
    };
    let out = Command::new(&candidate).arg("-version").output().map_err(|e| format!("{}: {e}", candidate.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .skip_while(|w| *w != "version")
        .nth(1)
        .ok_or_else(|| format!("{}: no version in `{}`", candidate.display(), text.trim()))?;
    let mut parts = version.split(|c: char| !c.is_ascii_digit()).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if (major, minor) < (10, 1) {
        return Err(format!("{} is QEMU {version}; vfio-user-pci needs >= 10.1", candidate.display()));
    }
    let devices = Command::new(&candidate)
        .args(["-machine", "none", "-device", "help"])
        .output()
        .map_err(|e| format!("{}: {e}", candidate.display()))?;
    if !String::from_utf8_lossy(&devices.stdout).contains("\"vfio-user-pci\"") {
        return Err(format!("{} (QEMU {version}) was built without vfio-user-pci", candidate.display()));
    }
    Ok(candidate)
}

/// Runs tests/guest/assets.sh with `args`.
fn assets_sh(args: &[&str], out: &Path) {
    let status = Command::new(manifest().join("tests/guest/assets.sh")).args(args).arg(out).status().unwrap();
    assert!(status.success(), "tests/guest/assets.sh {args:?} failed ({status})");
}

/// Where the tests keep their files.
fn work_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("real-guest")
}

/// Kills a child process when dropped (a failing assertion must not leave QEMU or the server behind).
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// The QEMU and the assets directory, or why the guest cannot run (once per test binary: the
/// guest program is built first either way, so it cannot rot unnoticed).
fn prepare() -> Result<(PathBuf, PathBuf), String> {
    static PREPARED: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
    PREPARED
        .get_or_init(|| {
            let assets = work_dir().join("assets");
            match find_qemu() {
                Ok(qemu) => {
                    assets_sh(&[], &assets);
                    Ok((qemu, assets))
                }
                Err(why) => {
                    assets_sh(&["--gemtest-only"], &assets);
                    Err(why)
                }
            }
        })
        .clone()
}

#[test]
fn coffee_lake_i915_runs_gem_work_on_a_vgpu() {
    run_guests("cfl", "cfl", &[Program::Gem]);
}

#[test]
fn broadwell_i915_runs_gem_work_on_a_vgpu() {
    run_guests("bdw", "bdw", &[Program::Gem]);
}

#[test]
fn coffee_lake_mesa_renders_frames_on_a_vgpu() {
    run_guests("cfl-mesa", "cfl", &[Program::Mesa]);
}

#[test]
fn broadwell_mesa_renders_frames_on_a_vgpu() {
    run_guests("bdw-mesa", "bdw", &[Program::Mesa]);
}

#[test]
fn coffee_lake_igt_gem_subtests_pass_on_a_vgpu() {
    run_guests("cfl-igt", "cfl", &[Program::Igt]);
}

#[test]
fn broadwell_igt_gem_subtests_pass_on_a_vgpu() {
    run_guests("bdw-igt", "bdw", &[Program::Igt]);
}

#[test]
fn two_guests_at_once_on_one_served_gpu() {
    // As users run it: one `serve`, two sockets, two VMs at the same time, one running the GEM
    // program (with its deliberate hang), the other Mesa. Each is served and counted on its own;
    // the first one's hang costs the second nothing.
    run_guests("cfl-two", "cfl", &[Program::Gem, Program::Mesa]);
}

/// What a guest runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Program {
    /// tests/guest/gemtest.rs: stores on every engine, a blit, 1,000 nops, a hang i915 resets.
    Gem,
    /// tests/guest/gltest.c and vktest.c: Mesa's iris renders 100 frames through EGL/GBM/GLES, its
    /// anv runs 100 Vulkan submissions (a clear and a copy, each waited for with a fence).
    Mesa,
    /// IGT's own test programs (from `SHADOWGPU_IGT_TESTS`): the subtests in tests/guest/igt-subtests.
    Igt,
}

impl Program {
    fn initrd(self) -> &'static str {
        match self {
            Program::Gem => "initramfs.cpio.gz",
            Program::Mesa => "initramfs-mesa.cpio.gz",
            Program::Igt => "initramfs-igt.cpio.gz",
        }
    }

    fn ram(self) -> &'static str {
        match self {
            Program::Gem => "512M",
            Program::Mesa | Program::Igt => "1536M",
        }
    }

    /// Everything (boot, the program, power-off) must be done within this.
    fn limit(self) -> Duration {
        match self {
            Program::Igt => Duration::from_secs(1500),
            _ => GUEST_LIMIT,
        }
    }

    /// Why the assets have no initramfs for this program.
    fn skipped(self, assets: &Path) -> String {
        let file = if self == Program::Igt { "igt-skipped" } else { "mesa-skipped" };
        let why = read(&assets.join(file));
        if why.trim().is_empty() {
            read(&assets.join("mesa-skipped"))
        } else {
            why
        }
    }
}

/// The vGPU type and device id the tests use on `platform`.
fn device_of(platform: &str) -> (&'static str, &'static str) {
    match platform {
        "bdw" => ("GVTg_V4_8", "0x1616"),
        _ => ("GVTg_V5_8", "0x3e92"),
    }
}

/// Serves one vGPU per program on one software GPU of `platform` (one `serve`, a socket each) to
/// as many QEMU guests at once, each running its program, and checks everything the guests and
/// the server report. `name` names the run's directory.
fn run_guests(name: &str, platform: &str, programs: &[Program]) {
    let (qemu, assets) = match prepare() {
        Ok(p) => p,
        Err(why) => {
            println!("real_guest: skipped (the guest program builds): {why}");
            return;
        }
    };
    if let Some(p) = programs.iter().find(|p| !assets.join(p.initrd()).exists()) {
        println!("real_guest: {name}: skipped ({p:?} has no initramfs): {}", p.skipped(&assets).trim());
        return;
    }
    // One run at a time: each TCG guest wants a core of its own, and the two-guest run two.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (ty, chipset) = device_of(platform);
    let work = work_dir().join(name);
    std::fs::create_dir_all(&work).unwrap();
    let sockets: Vec<PathBuf> = (0..programs.len()).map(|i| work.join(format!("vgpu{i}.sock"))).collect();
    let server_log = work.join("server.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shadowgpu"));
    cmd.args(["serve", "--once", "--platform", platform, "--type", ty]);
    for s in &sockets {
        let _ = std::fs::remove_file(s);
        cmd.arg("--socket").arg(s);
    }
    let server = cmd
        .stdout(File::create(work.join("server.out")).unwrap())
        .stderr(File::create(&server_log).unwrap())
        .spawn()
        .unwrap();
    let mut server = Reaper(server);
    let start = Instant::now();
    while !sockets.iter().all(|s| s.exists()) {
        assert!(start.elapsed() < Duration::from_secs(10), "the server did not create its sockets");
        assert!(server.0.try_wait().unwrap().is_none(), "the server exited: {}", read(&server_log));
        std::thread::sleep(Duration::from_millis(20));
    }

    let started = Instant::now();
    let mut guests = Vec::new();
    for (i, (program, socket)) in programs.iter().zip(&sockets).enumerate() {
        let console = work.join(format!("console{i}.log"));
        // Writes through the aperture must be in guest memory before the guest's CPU reads it
        // directly, as on the hardware: no posted writes (docs/integration.md).
        let device = format!(
            "{{\"driver\":\"vfio-user-pci\",\"socket\":{{\"type\":\"unix\",\"path\":\"{}\"}},\"addr\":\"02.0\",\
             \"x-no-posted-writes\":true}}",
            socket.display()
        );
        let ram = program.ram();
        let guest = Command::new(&qemu)
            .args(["-machine", "q35,accel=tcg,memory-backend=ram", "-cpu", "max", "-smp", "1"])
            .args(["-m", ram, "-object", &format!("memory-backend-memfd,id=ram,size={ram},share=on")])
            .args(["-nodefaults", "-display", "none", "-vga", "none", "-no-reboot"])
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .arg("-kernel")
            .arg(assets.join("vmlinuz"))
            .arg("-initrd")
            .arg(assets.join(program.initrd()))
            // error_capture=0: i915 would copy the hung batch, ring and context out through the
            // aperture byte by byte, each byte a vfio-user round trip (see docs/integration.md).
            .args(["-append", "console=ttyS0 panic=-1 i915.disable_display=1 i915.error_capture=0"])
            .args(["-device", &device])
            .stdout(File::create(work.join(format!("qemu{i}.out"))).unwrap())
            .stderr(File::create(work.join(format!("qemu{i}.err"))).unwrap())
            .spawn()
            .unwrap();
        guests.push((*program, console, Reaper(guest)));
    }
    let exits: Vec<Option<std::process::ExitStatus>> =
        guests.iter_mut().map(|(p, _, g)| wait_for(&mut g.0, p.limit().saturating_sub(started.elapsed()))).collect();
    let guest_secs = started.elapsed().as_secs_f64();
    let server_exit = wait_for(&mut server.0, Duration::from_secs(20));
    let server_text = read(&server_log);
    let logs: Vec<String> = guests.iter().map(|(_, console, _)| read(console)).collect();
    for (i, log) in logs.iter().enumerate() {
        for l in guest_lines(log) {
            println!("{name}[{i}]: {l}");
        }
    }
    println!("real_guest: {name}: QEMU ran {guest_secs:.1} s ({})", qemu.display());
    println!("{server_text}");

    for (i, ((program, console, _), exit)) in guests.iter().zip(&exits).enumerate() {
        let limit = program.limit();
        assert!(exit.is_some(), "guest {i} did not power off within {limit:?}; console: {}", console.display());
        let lines = guest_lines(&logs[i]);
        let failures: Vec<&&str> = lines.iter().filter(|l| l.contains("FAIL")).collect();
        assert!(failures.is_empty(), "guest {i} reported failures: {failures:#?}");
        // The server numbers its vGPUs from 1, in socket order.
        let id = format!("vGPU {}: client left", i + 1);
        let left =
            server_text.lines().find(|l| l.contains(&id)).unwrap_or_else(|| panic!("no `{id}` in the server's log"));
        check(*program, &lines, left, chipset, console);
    }
    assert!(server_exit.is_some(), "the server did not exit after the guests left");
    assert!(server_text.contains("untracked registers touched"), "the server did not list untracked registers");
}

fn guest_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| {
            ["guest:", "gemtest:", "gltest:", "vktest:", "igt:", "igt-time:", "igt-reset:"]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect()
}

/// What a guest that ran `program` must have printed, and the server's summary of its client.
fn check(program: Program, lines: &[&str], left: &str, chipset: &str, console: &Path) {
    let has = |what: &str| lines.iter().any(|l| l.contains(what));
    let chipset_line = format!("chipset {chipset}");
    let common = ["guest: gvt-g mode detected", "guest: ggtt ballooned", "guest: not wedged"];
    let wanted: Vec<&str> = match program {
        Program::Igt => {
            // Every listed subtest passes, or skips for a reason the hardware would give too.
            let verdicts: Vec<&&str> = lines.iter().filter(|l| l.starts_with("igt: ") && l.contains('@')).collect();
            let listed = include_str!("guest/igt-subtests").lines().filter(|l| !l.is_empty() && !l.starts_with('#'));
            assert_eq!(verdicts.len(), listed.count(), "a verdict per subtest: {verdicts:#?}");
            let bad: Vec<&&&str> =
                verdicts.iter().filter(|l| !(l.ends_with(": pass") || l.contains(": skip"))).collect();
            assert!(bad.is_empty(), "IGT subtests that did not pass: {bad:#?}");
            // The only hang is gem_ctx_exec basic-norecovery's, on purpose: IGT resets the engine
            // by hand (what it had queued is cancelled), and i915 reports the context's reset.
            let resets: Vec<&&str> = lines.iter().filter(|l| l.starts_with("igt-reset: ")).collect();
            let stray: Vec<&&&str> =
                resets.iter().filter(|l| !(l.contains("Manually reset") || l.contains("gem_ctx_exec["))).collect();
            assert!(stray.is_empty(), "hangs or resets no IGT subtest asked for: {stray:#?}");
            assert!(left.contains(" 0 failed,") && left.contains(" 0 refused"), "{left}");
            vec![]
        }
        Program::Mesa => {
            // Every workload Mesa and i915 submitted ran: none refused, failed or cancelled.
            assert!(left.contains(" 0 failed, 0 cancelled, 0 refused"), "{left}");
            vec![
                "gltest: PASS",
                "guest: gltest passed",
                "vktest: PASS",
                "guest: vktest passed",
                "guest: no GPU hang, no engine reset",
            ]
        }
        Program::Gem => {
            // The server saw the endless batch fail on the engine and nothing else.
            assert!(left.contains(" 1 failed"), "{left}");
            vec![
                chipset_line.as_str(),
                "guest: not wedged after gemtest",
                "guest: card0 present",
                "guest: renderD128 present",
                "gemtest: store rcs ok",
                "gemtest: store bcs ok",
                "gemtest: store vcs0 ok",
                "gemtest: store vecs ok",
                "gemtest: blit bcs ok",
                "gemtest: nops 1000",
                "gemtest: hang reset after",
                "gemtest: store rcs-after-reset ok",
                "guest: i915 reset rcs0 through the vGPU",
                "gemtest: PASS",
            ]
        }
    };
    for want in common.iter().chain(&wanted) {
        assert!(has(want), "missing `{want}` in the guest's console ({})", console.display());
    }
}

fn read(p: &Path) -> String {
    std::fs::read(p).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}
