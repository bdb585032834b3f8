//! The `shadowgpu scan` command: listing, verdicts, JSON, exit codes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

use shadowgpu::cmd::emit::CmdBuf;
use shadowgpu::cmd::AddrSpace::{Ggtt, Ppgtt};

fn tmp(name: &str, cmds: &CmdBuf) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shadowgpu-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, cmds.to_bytes()).unwrap();
    p
}

fn scan(args: &[String]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_shadowgpu")).arg("scan").args(args).output().unwrap();
    (out.status.code().unwrap(), String::from_utf8(out.stdout).unwrap(), String::from_utf8(out.stderr).unwrap())
}

fn base(ring: &std::path::Path) -> Vec<String> {
    vec![
        "--platform".into(),
        "skl".into(),
        "--engine".into(),
        "rcs".into(),
        "--aperture".into(),
        "0x100000:1M".into(),
        "--hidden".into(),
        "0x1000000:0x100000".into(),
        "--ring".into(),
        format!("{}@0x100000", ring.display()),
    ]
}

#[test]
fn accepted_stream_lists_every_command() {
    let mut batch = CmdBuf::new();
    batch.store_dword(Ggtt, 0x18_0000, 1).bb_end();
    let mut pp = CmdBuf::new();
    pp.store_dword(Ppgtt, 0x7000, 2).user_interrupt().bb_end();
    let mut ring = CmdBuf::new();
    ring.bb_start(Ggtt, 0x10_8000, false).bb_start(Ppgtt, 0xffff_ffff_0000_0000, false).user_interrupt();
    let r = tmp("ok-ring.bin", &ring);
    let mut args = base(&r);
    args.push("--batch".into());
    args.push(format!("{}@0x108000", tmp("ok-batch.bin", &batch).display()));
    args.push("--ppgtt".into());
    args.push(format!("{}@0xffff00000000", tmp("ok-pp.bin", &pp).display()));
    let (code, out, err) = scan(&args);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("MI_BATCH_BUFFER_START"), "{out}");
    assert!(out.contains("batch L1 ggtt@0x108000"), "{out}");
    assert!(out.contains("batch L1 ppgtt@0xffff00000000"), "{out}");
    assert!(out.contains("MI_USER_INTERRUPT") && out.contains("patched"), "{out}");
    assert!(out.contains("Address=ggtt:0x180000"), "{out}");
    assert!(out.contains("Address=ppgtt:0x7000"), "{out}");
    assert!(out.contains("Batch_Buffer_Start_Address=ppgtt:0xffffffff00000000"), "{out}");
    assert!(out.lines().last().unwrap().starts_with("accepted: 8 commands"), "{out}");
}

#[test]
fn rejected_stream_exits_1_with_the_reason() {
    let mut ring = CmdBuf::new();
    ring.noop(2).store_dword(Ggtt, 0x2000, 1);
    let (code, out, _) = scan(&base(&tmp("bad-ring.bin", &ring)));
    assert_eq!(code, 1, "{out}");
    let last = out.lines().last().unwrap();
    assert!(last.starts_with("rejected: ring +0x8 MI_STORE_DATA_IMM"), "{last}");
    assert!(last.contains("outside the vGPU's graphics memory"), "{last}");
}

#[test]
fn json_and_summary() {
    let mut ring = CmdBuf::new();
    ring.lri(&[(0x2080, 0)]);
    let r = tmp("json-ring.bin", &ring);
    let mut args = base(&r);
    args.push("--json".into());
    let (code, out, _) = scan(&args);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verdict"], "rejected");
    assert_eq!(v["error"]["command"], "MI_LOAD_REGISTER_IMM");
    assert_eq!(v["error"]["offset"], 0);

    let mut ok = CmdBuf::new();
    ok.noop(6).store_dword(Ggtt, 0x10_1000, 3);
    let mut args = base(&tmp("sum-ring.bin", &ok));
    args.push("--summary".into());
    let (code, out, _) = scan(&args);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.starts_with("accepted: 1 commands, 6 MI_NOOP dwords"), "{out}");
}

#[test]
fn usage_and_file_errors_exit_2() {
    let (code, _, err) = scan(&["--aperture".into(), "0:1M".into(), "--ring".into(), "/nonexistent/ring@0".into()]);
    assert_eq!(code, 2, "{err}");
    let (code, _, _) = scan(&["--aperture".into(), "nonsense".into()]);
    assert_eq!(code, 2);
    let mut ring = CmdBuf::new();
    ring.noop(2);
    let mut args = base(&tmp("plat.bin", &ring));
    args[1] = "icl".into();
    assert_eq!(scan(&args).0, 2);
}
