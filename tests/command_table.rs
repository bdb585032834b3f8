//! Every row of the command data files is in the generated table, decodes on its engines, and has
//! the same length rule. The data files are the crate's own copies (`data/`), so this checks the
//! build-time generation and the O(1) decode against the source facts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::HashMap;

use shadowgpu::cmd::{CommandTable, Decoded, Length};
use shadowgpu::hw::{Engine, Gen};

fn rows(file: &str) -> Vec<HashMap<String, String>> {
    let path = format!("{}/data/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut lines = Vec::new();
    // Minimal CSV: quoted fields may hold commas; no embedded newlines in these files.
    for line in text.lines() {
        let mut fields = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    cur.push('"');
                }
                '"' => quoted = !quoted,
                ',' if !quoted => fields.push(std::mem::take(&mut cur)),
                _ => cur.push(c),
            }
        }
        fields.push(cur);
        lines.push(fields);
    }
    let header = lines.remove(0);
    for l in lines {
        out.push(header.iter().cloned().zip(l).collect());
    }
    out
}

fn hex(s: &str) -> u32 {
    u32::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn engines(s: &str) -> Vec<Engine> {
    let mut v = Vec::new();
    for p in s.split('|') {
        match p {
            "render" | "RCS" => v.push(Engine::Rcs),
            "blitter" | "BCS" => v.push(Engine::Bcs),
            "video" => v.extend([Engine::Vcs, Engine::Vcs2]),
            "VCS" => v.push(Engine::Vcs),
            "VCS2" => v.push(Engine::Vcs2),
            "VECS" => v.push(Engine::Vecs),
            "any" => v.extend(Engine::ALL),
            _ => {}
        }
    }
    v
}

fn expect_command(t: &CommandTable, engine: Engine, dw0: u32, what: &str) -> &'static shadowgpu::cmd::CmdDesc {
    match t.decode(engine, dw0) {
        Decoded::Command(d) => d,
        other => panic!("{what}: {dw0:#010x} on {engine}: {other:?}"),
    }
}

#[test]
fn every_genxml_row_decodes_with_its_length_rule() {
    for (gen, file) in [(Gen::Gen8, "gen8-commands.csv"), (Gen::Gen9, "gen9-commands.csv")] {
        let t = CommandTable::for_gen(gen);
        let rows = rows(file);
        assert!(rows.len() > 170, "{file}");
        for r in &rows {
            let name = &r["name"];
            let value = hex(&r["header_value"]);
            let bias: u32 = r["bias"].parse().unwrap();
            let want = if r["has_length_field"] == "yes" {
                let hi: u32 = r["length_field_bits"].split(':').next().unwrap().parse().unwrap();
                Length::Field { mask: (1 << (hi + 1)) - 1, bias }
            } else {
                Length::Fixed(r["xml_length_dw"].parse().unwrap())
            };
            for e in engines(&r["engine"]) {
                let d = expect_command(t, e, value, name);
                assert_eq!(&d.name, name, "{gen:?} {value:#x} on {e}");
                assert_eq!(d.length, want, "{gen:?} {name}");
                if let Ok(n) = r["xml_length_dw"].parse::<u16>() {
                    assert_eq!(d.nominal, n, "{gen:?} {name} template length");
                }
            }
        }
    }
}

#[test]
fn every_gvt_row_decodes_on_its_rings() {
    // Known genxml/GVT disagreements (genxml is the reference): three on Gen8, and GVT's constant
    // length for MI_LOAD_SCAN_LINES_INCL, which genxml gives a 6-bit length field (it is rejected anyway).
    let gen8_exceptions = ["MI_MATH", "MI_CONDITIONAL_BATCH_BUFFER_END", "OP_SWTESS_BASE_ADDRESS"];
    for (gen, devices) in [(Gen::Gen8, &["BDW"][..]), (Gen::Gen9, &["SKL", "KBL", "CFL"][..])] {
        let t = CommandTable::for_gen(gen);
        for r in rows("gvt-cmd-table.csv") {
            if !r["devices"].split('|').any(|d| devices.contains(&d)) {
                continue;
            }
            let name = &r["name"];
            let value = hex(&r["header_value"]);
            let len: u32 = r["len_or_lenbits"].parse().unwrap();
            for e in engines(&r["rings"]) {
                // GVT decodes only MI and 2D on the blitter, whatever a row's ring mask says.
                if e == Engine::Bcs && value >> 29 == 3 {
                    continue;
                }
                let d = expect_command(t, e, value, name);
                if name == "MI_LOAD_SCAN_LINES_INCL" || gen == Gen::Gen8 && gen8_exceptions.contains(&name.as_str()) {
                    continue;
                }
                match d.length {
                    Length::Fixed(n) => assert!(
                        r["flags"].contains("F_LEN_CONST") && u32::from(n) == len,
                        "{gen:?} {name}: fixed {n} vs GVT {} {len}",
                        r["flags"]
                    ),
                    Length::Field { mask, .. } => {
                        assert!(!r["flags"].contains("F_LEN_CONST"), "{gen:?} {name}: GVT says constant");
                        assert_eq!(mask.count_ones(), len, "{gen:?} {name}: length bits");
                    }
                }
            }
        }
    }
}

#[test]
fn every_blitter_row_decodes_on_bcs_only() {
    for gen in [Gen::Gen8, Gen::Gen9] {
        let t = CommandTable::for_gen(gen);
        for r in rows("blitter-commands.csv") {
            let value = hex(&r["header_value"]);
            let d = expect_command(t, Engine::Bcs, value | 8, &r["name"]);
            assert_eq!(d.name, r["name"]);
            assert_eq!(d.length, Length::Field { mask: 0xff, bias: 2 });
            assert_eq!(d.length.of(value | 8), 10);
            for e in [Engine::Rcs, Engine::Vcs, Engine::Vecs] {
                assert!(!matches!(t.decode(e, value), Decoded::Command(_)), "{} on {e}", d.name);
            }
        }
    }
}

#[test]
fn decode_is_total_over_every_header() {
    // Every possible opcode/type combination decodes to something (no panic), and a decoded
    // command always matches its own header.
    for gen in [Gen::Gen8, Gen::Gen9] {
        let t = CommandTable::for_gen(gen);
        for e in Engine::ALL {
            for hi in 0..=0xffffu32 {
                let dw0 = hi << 16 | 0x5;
                let (decoded, len) = t.decode_with_len(e, dw0);
                if let Decoded::Command(d) | Decoded::WrongEngine(d) = decoded {
                    assert_eq!(len, d.length.of(dw0), "{} packed length", d.name);
                }
                if let Decoded::Command(d) = decoded {
                    assert_eq!(dw0 & d.header_mask, d.header_value);
                    assert!(d.engines.has(e));
                    assert!(d.length.of(dw0) >= 1);
                }
            }
        }
    }
}
