//! Generates the command tables (`OUT_DIR/cmd_tables.rs`) from the data files in `data/`.
//!
//! Sources, in order of precedence for each generation:
//! 1. `data/gen{8,9}-commands.csv`: one row per Mesa genxml instruction (lengths, engines, address fields);
//! 2. `data/gvt-cmd-table.csv`: commands Linux GVT-g knows that genxml lacks (VEBOX, a few MI/3D/MFX);
//! 3. `data/blitter-commands.csv`: the 2D (XY_*) commands, which genxml does not describe for Gen8/9.
//!
//! The output is, per generation, a descriptor array and one direct-index table per decode class
//! (MI by bits 28:23, 2D by bits 28:22, render / video / VEBox by bits 28:16), so a lookup is one
//! shift, one mask and one load. A data error (two commands claiming the same encoding on one
//! engine) fails the build.

// Build-time code over the crate's own data files: a malformed row should stop the build loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

const RCS: u8 = 1;
const BCS: u8 = 2;
const VCS: u8 = 4;
const VCS2: u8 = 8;
const VECS: u8 = 16;
const ALL: u8 = RCS | BCS | VCS | VCS2 | VECS;

fn parse_csv(text: &str) -> Vec<BTreeMap<String, String>> {
    let mut rows = Vec::new();
    let mut records = Vec::new();
    let mut field = String::new();
    let mut record = Vec::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            ('"', _) => quoted = !quoted,
            (',', false) => record.push(std::mem::take(&mut field)),
            ('\n', false) => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            ('\r', false) => {}
            _ => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    let mut it = records.into_iter();
    let header = it.next().expect("csv header");
    for rec in it {
        if rec.len() == 1 && rec[0].is_empty() {
            continue;
        }
        assert_eq!(rec.len(), header.len(), "csv row {rec:?}");
        rows.push(header.iter().cloned().zip(rec).collect());
    }
    rows
}

fn hex(s: &str) -> u32 {
    u32::from_str_radix(s.trim().trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("hex `{s}`"))
}

fn engines_of(s: &str) -> u8 {
    let mut m = 0;
    for part in s.split('|').map(str::trim) {
        m |= match part {
            "render" | "RCS" => RCS,
            "blitter" | "BCS" => BCS,
            "video" => VCS | VCS2,
            "VCS" => VCS,
            "VCS2" => VCS2,
            "VECS" | "vebox" => VECS,
            "any" => ALL,
            "" => 0,
            other => panic!("engine `{other}`"),
        };
    }
    m
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Class {
    Mi,
    TwoD,
    Render,
    Video,
    Vebox,
}

#[derive(Clone, Debug)]
struct Desc {
    name: String,
    mask: u32,
    value: u32,
    length: String,
    /// Packed length rule for the decode tables: bits 0..5 field width, 5..13 bias or fixed
    /// length, bit 13 fixed.
    len_code: u32,
    /// Length in dwords of the command's usual form (genxml's template length).
    nominal: u32,
    engines: u8,
    handler: &'static str,
    addrs: Vec<String>,
    source: &'static str,
}

fn handler_for(name: &str) -> &'static str {
    match name {
        "MI_USER_INTERRUPT" => "Handler::UserInterrupt",
        "MI_WAIT_FOR_EVENT" => "Handler::WaitForEvent",
        "MI_REPORT_HEAD" => "Handler::ReportHead",
        "MI_BATCH_BUFFER_END" => "Handler::BbEnd",
        "MI_BATCH_BUFFER_START" => "Handler::BbStart",
        "MI_CONDITIONAL_BATCH_BUFFER_END" => "Handler::CondBbEnd",
        "MI_LOAD_REGISTER_IMM" => "Handler::Lri",
        "MI_LOAD_REGISTER_MEM" => "Handler::Lrm",
        "MI_STORE_REGISTER_MEM" => "Handler::Srm",
        "MI_LOAD_REGISTER_REG" => "Handler::Lrr",
        "MI_STORE_DATA_IMM" => "Handler::StoreDataImm",
        "MI_FLUSH_DW" => "Handler::FlushDw",
        "PIPE_CONTROL" => "Handler::PipeControl",
        "MI_ATOMIC" | "MI_OP_2F" => "Handler::Atomic",
        "MI_SEMAPHORE_WAIT" => "Handler::SemaphoreWait",
        "MI_COPY_MEM_MEM" | "MI_OP_2E" => "Handler::CopyMemMem",
        "MI_REPORT_PERF_COUNT" => "Handler::ReportPerfCount",
        "MI_LOAD_URB_MEM" | "MI_STORE_URB_MEM" | "MI_STORE_URM_MEM" => "Handler::UrbMem",
        "MI_RS_STORE_DATA_IMM" => "Handler::RsStoreDataImm",
        "MI_SET_CONTEXT" => "Handler::Reject(Rejection::SetContext)",
        "MI_UPDATE_GTT" => "Handler::Reject(Rejection::UpdateGtt)",
        "MI_DISPLAY_FLIP" => "Handler::Reject(Rejection::DisplayFlip)",
        "MI_LOAD_SCAN_LINES_INCL" | "MI_LOAD_SCAN_LINES_EXCL" => "Handler::Reject(Rejection::ScanLines)",
        "MI_STORE_DATA_INDEX" => "Handler::Reject(Rejection::StoreDataIndex)",
        "MI_CLFLUSH" => "Handler::Reject(Rejection::ClFlush)",
        "XY_SRC_COPY_BLT" => "Handler::Blit(BlitKind::SrcCopy)",
        "XY_FAST_COPY_BLT" => "Handler::Blit(BlitKind::FastCopy)",
        "XY_COLOR_BLT" => "Handler::Blit(BlitKind::ColorFill)",
        n if n.starts_with("XY_") || n.ends_with("_BLT") => "Handler::Blit(BlitKind::Opaque)",
        _ => "Handler::Generic",
    }
}

/// `Name@dwD[hi:lo]/address`, `Name[i]@dwD[hi:lo]+S*i/address (i<N)` or `(i>=0,repeats to end)`.
fn parse_addr_fields(cmd: &str, s: &str) -> Vec<String> {
    let mut out = Vec::new();
    for f in s.split("; ").filter(|f| !f.is_empty()) {
        if !f.contains("/address") {
            continue;
        }
        let at = f.rfind("@dw").expect("@dw");
        let rest = &f[at + 3..];
        let lb = rest.find('[').expect("[");
        let dword: u32 = rest[..lb].parse().expect("dword");
        let rb = rest.find(']').expect("]");
        let (hi, lo) = rest[lb + 1..rb].split_once(':').expect(":");
        let (hi, lo): (u32, u32) = (hi.parse().expect("hi"), lo.parse().expect("lo"));
        let after = &rest[rb + 1..];
        let (stride, count) = if let Some(p) = after.strip_prefix('+') {
            let star = p.find('*').expect("*");
            let stride: u32 = p[..star].parse().expect("stride");
            let count = if p.contains("repeats to end") {
                0
            } else {
                let lt = p.find("(i<").expect("(i<");
                let end = p[lt..].find(')').expect(")") + lt;
                p[lt + 3..end].parse().expect("count")
            };
            (stride, count)
        } else {
            (0, 1)
        };
        // A field split as `X@dw2[31:6]` + `X High@dw3[31:0]` is one 64-bit address; keep only the low part.
        if f.contains("High@") || f.contains("Address High") {
            continue;
        }
        let name = f[..at].replace('"', "");
        out.push(format!(
            "AddrField {{ name: {name:?}, dword: {dword}, lo: {lo}, hi: {hi}, stride: {stride}, count: {count}, space: {} }}",
            selector_for(cmd, &name)
        ));
    }
    out
}

/// Width of a DWord Length field given as `hi:0`.
fn field_bits(range: &str) -> u32 {
    let (hi, lo) = range.split_once(':').unwrap();
    assert_eq!(lo, "0", "length field {range}");
    hi.parse::<u32>().unwrap() + 1
}

fn field_len(bits: u32, bias: u32) -> (String, u32) {
    assert!(bits < 32 && bias < 256, "length field {bits} bits, bias {bias}");
    (format!("Length::Field {{ mask: {:#x}, bias: {bias} }}", (1u32 << bits) - 1), bits | bias << 5)
}

fn fixed_len(n: u32) -> (String, u32) {
    assert!((1..256).contains(&n), "fixed length {n}");
    (format!("Length::Fixed({n})"), n << 5 | 1 << 13)
}

/// Which address space an address field is in: the command's selector bit, or the context's
/// default space (PPGTT for every Gen8+ execlist context) where the command has none.
fn selector_for(cmd: &str, field: &str) -> &'static str {
    const MI_GGTT_BIT22: &str = "AddrSel::Bit { dword: 0, bit: 22, set: AddrSpace::Ggtt }";
    match (cmd, field) {
        ("MI_BATCH_BUFFER_START", _) => "AddrSel::Bit { dword: 0, bit: 8, set: AddrSpace::Ppgtt }",
        ("MI_COPY_MEM_MEM", "Destination Memory Address") => "AddrSel::Bit { dword: 0, bit: 21, set: AddrSpace::Ggtt }",
        (
            "MI_STORE_DATA_IMM"
            | "MI_STORE_REGISTER_MEM"
            | "MI_LOAD_REGISTER_MEM"
            | "MI_ATOMIC"
            | "MI_SEMAPHORE_WAIT"
            | "MI_CONDITIONAL_BATCH_BUFFER_END"
            | "MI_COPY_MEM_MEM"
            | "MI_CLFLUSH",
            _,
        ) => MI_GGTT_BIT22,
        ("MI_FLUSH_DW", _) => "AddrSel::Bit { dword: 1, bit: 2, set: AddrSpace::Ggtt }",
        ("PIPE_CONTROL", _) => "AddrSel::Bit { dword: 1, bit: 24, set: AddrSpace::Ggtt }",
        ("MI_REPORT_PERF_COUNT", _) => "AddrSel::Bit { dword: 1, bit: 0, set: AddrSpace::Ggtt }",
        ("MI_SET_CONTEXT" | "MI_DISPLAY_FLIP", _) => "AddrSel::Ggtt",
        _ => "AddrSel::Context",
    }
}

fn class_of(command_type: u32, engines: u8) -> Vec<Class> {
    match command_type {
        0 => vec![Class::Mi],
        2 => vec![Class::TwoD],
        3 => {
            let mut v = Vec::new();
            if engines & RCS != 0 {
                v.push(Class::Render);
            }
            if engines & (VCS | VCS2) != 0 {
                v.push(Class::Video);
            }
            if engines & VECS != 0 {
                v.push(Class::Vebox);
            }
            v
        }
        t => panic!("command type {t}"),
    }
}

fn key_space(c: Class) -> (u32, u32) {
    // (shift, bits) of the direct index for a decode class.
    match c {
        Class::Mi => (23, 6),
        Class::TwoD => (22, 7),
        Class::Render | Class::Video | Class::Vebox => (16, 13),
    }
}

fn type_bits(c: Class) -> u32 {
    match c {
        Class::Mi => 0,
        Class::TwoD => 2 << 29,
        _ => 3 << 29,
    }
}

fn gen_tables(gen: u32, data: &Path, out: &mut String) {
    let genxml = parse_csv(&std::fs::read_to_string(data.join(format!("gen{gen}-commands.csv"))).unwrap());
    let gvt = parse_csv(&std::fs::read_to_string(data.join("gvt-cmd-table.csv")).unwrap());
    let blt = parse_csv(&std::fs::read_to_string(data.join("blitter-commands.csv")).unwrap());

    let mut descs: Vec<(Desc, Vec<Class>)> = Vec::new();
    for r in &genxml {
        let ty: u32 = r["command_type"].parse().unwrap();
        let mut engines = engines_of(&r["engine"]) | engines_of(&r["gvt_rings"]);
        // SFC units sit behind a VDBox or the VEBox; media drivers program them from either engine.
        if r["name"].starts_with("SFC_") {
            engines |= VECS;
        }
        let bias: u32 = r["bias"].parse().unwrap();
        let (length, len_code) = if r["has_length_field"] == "yes" {
            field_len(field_bits(&r["length_field_bits"]), bias)
        } else {
            fixed_len(r["xml_length_dw"].parse().unwrap())
        };
        let nominal = r["xml_length_dw"].parse().unwrap_or(bias);
        let d = Desc {
            name: r["name"].clone(),
            mask: hex(&r["header_mask"]),
            value: hex(&r["header_value"]),
            length,
            len_code,
            nominal,
            engines,
            handler: handler_for(&r["name"]),
            addrs: parse_addr_fields(&r["name"], &r["address_fields"]),
            source: "genxml",
        };
        descs.push((d, class_of(ty, engines)));
    }
    let gen_devices: &[&str] = if gen == 8 { &["BDW"] } else { &["SKL", "KBL", "CFL"] };
    for r in &gvt {
        if !r["devices"].split('|').any(|d| gen_devices.contains(&d)) {
            continue;
        }
        let value = hex(&r["header_value"]);
        let ty = value >> 29;
        let mask = match ty {
            0 => 0xff80_0000,
            2 => 0xffc0_0000,
            _ => 0xffff_0000,
        };
        let engines = engines_of(&r["rings"]);
        let classes = class_of(ty, engines);
        // Known already (same encoding, overlapping engines)? genxml's row wins; GVT's rings were merged.
        let known = descs.iter().any(|(d, cls)| {
            (d.value & d.mask) == (value & d.mask)
                && (value >> 29) == (d.value >> 29)
                && cls.iter().any(|c| classes.contains(c))
                && d.engines & engines != 0
        });
        if known || ty == 2 {
            continue;
        }
        let len: u32 = r["len_or_lenbits"].parse().unwrap();
        let (length, len_code) = if r["flags"].contains("F_LEN_CONST") { fixed_len(len) } else { field_len(len, 2) };
        let nominal = if r["flags"].contains("F_LEN_CONST") { len } else { r["valid_len_dw"].parse().unwrap_or(2) };
        let d = Desc {
            name: r["name"].clone(),
            mask,
            value,
            length,
            len_code,
            nominal,
            engines,
            handler: handler_for(&r["name"]),
            addrs: Vec::new(),
            source: "gvt",
        };
        descs.push((d, classes));
    }
    for r in &blt {
        let mut addrs = Vec::new();
        let adw = &r["gen8plus_address_dwords"];
        for part in adw.split(',').filter(|p| !p.is_empty()) {
            let (range, role) = part.split_once(' ').unwrap();
            let lo_dw: u32 = range.split('-').next().unwrap().parse().unwrap();
            let role = role.trim_matches(|c| c == '(' || c == ')');
            addrs.push(format!(
                "AddrField {{ name: {role:?}, dword: {lo_dw}, lo: 0, hi: 47, stride: 0, count: 1, space: AddrSel::Context }}"
            ));
        }
        let (length, len_code) = field_len(field_bits(&r["length_field_bits"]), r["bias"].parse().unwrap());
        let nominal = r["gen8plus_total_dwords"].parse().unwrap_or(2);
        let d = Desc {
            name: r["name"].clone(),
            mask: hex(&r["header_mask"]),
            value: hex(&r["header_value"]),
            length,
            len_code,
            nominal,
            engines: BCS,
            handler: handler_for(&r["name"]),
            addrs,
            source: "blitter",
        };
        descs.push((d, vec![Class::TwoD]));
    }

    let g = format!("GEN{gen}");
    writeln!(out, "/// Gen{gen} command descriptors.").unwrap();
    writeln!(out, "pub(crate) static {g}_DESCS: [CmdDesc; {}] = [", descs.len()).unwrap();
    for (d, _) in &descs {
        writeln!(
            out,
            "    CmdDesc {{ name: {:?}, header_mask: {:#010x}, header_value: {:#010x}, length: {}, nominal: {}, engines: EngineMask::from_bits_retain({:#x}), handler: {}, addrs: &[{}], source: Source::{} }},",
            d.name,
            d.mask,
            d.value,
            d.length,
            d.nominal,
            d.engines,
            d.handler,
            d.addrs.join(", "),
            match d.source {
                "genxml" => "Genxml",
                "gvt" => "Gvt",
                _ => "Blitter",
            }
        )
        .unwrap();
    }
    writeln!(out, "];").unwrap();

    let mut tables: Vec<(String, Vec<u32>)> = Vec::new();
    for (class, cname) in [
        (Class::Mi, "MI"),
        (Class::TwoD, "BLT"),
        (Class::Render, "RENDER"),
        (Class::Video, "VIDEO"),
        (Class::Vebox, "VEBOX"),
    ] {
        tables.push((cname.to_string(), fill_table(gen, &descs, class)));
    }
    for (name, table) in tables {
        writeln!(
            out,
            "/// Gen{gen} {name} decode table: flags | (descriptor index + 1) << 14 | length code, 0 for none."
        )
        .unwrap();
        writeln!(out, "pub(crate) static {g}_{name}: [u32; {}] = {table:?};", table.len()).unwrap();
    }
}

/// Flag of a decode-table entry: the command needs nothing but a length walk when surfaces are
/// PPGTT-addressed (generic handler or a blit, the key covers its whole header mask, valid on every
/// engine that uses the table).
const FAST: u32 = 1 << 31;
/// Flag of a decode-table entry: the command has surfaces to audit when they are GGTT-addressed.
const GGTT_AUDIT: u32 = 1 << 30;
/// Flag of a decode-table entry: length is `(dw0 & 0xff) + 2`.
const RULE_8_2: u32 = 1 << 29;
/// Flag of a decode-table entry: length is `(dw0 & 0xfff) + 2`.
const RULE_12_2: u32 = 1 << 28;

fn class_engines(class: Class) -> u8 {
    match class {
        Class::Mi => ALL,
        Class::TwoD => BCS,
        Class::Render => RCS,
        Class::Video => VCS | VCS2,
        Class::Vebox => VECS,
    }
}

fn fill_table(gen: u32, descs: &[(Desc, Vec<Class>)], class: Class) -> Vec<u32> {
    let (shift, bits) = key_space(class);
    let n = 1usize << bits;
    let key_mask = (((1u32 << bits) - 1) << shift) | 0xe000_0000;
    let mut table = vec![0u32; n];
    let mut owner_bits = vec![0u32; n];
    let users = class_engines(class);
    for (i, (d, classes)) in descs.iter().enumerate() {
        if !classes.contains(&class) {
            continue;
        }
        assert_eq!(d.value >> 29, type_bits(class) >> 29, "{} in wrong class", d.name);
        for (k, slot) in table.iter_mut().enumerate() {
            let dw0 = type_bits(class) | ((k as u32) << shift);
            if (dw0 & d.mask & key_mask) != (d.value & d.mask & key_mask) {
                continue;
            }
            let specificity = (d.mask & key_mask).count_ones();
            if *slot != 0 {
                let prev = &descs[((*slot >> 14) & 0x7ff) as usize - 1].0;
                if owner_bits[k] == specificity && prev.engines & d.engines != 0 {
                    // Same encoding twice: genxml and GVT disagree on a name only; the first one stays.
                    assert!(
                        prev.source != d.source,
                        "gen{gen}: {} and {} share encoding {dw0:#010x}",
                        prev.name,
                        d.name
                    );
                    continue;
                }
                if owner_bits[k] >= specificity {
                    continue;
                }
            }
            let covered = d.mask & !key_mask == 0;
            // Generic commands and blits need nothing but their length with PPGTT surfaces.
            let walk_only = d.handler == "Handler::Generic" || d.handler.starts_with("Handler::Blit(");
            let fast = walk_only && covered && d.engines & users == users;
            let ggtt_audit = !d.addrs.is_empty() || d.handler.starts_with("Handler::Blit(");
            let flags = if fast { FAST } else { 0 } | if ggtt_audit { GGTT_AUDIT } else { 0 };
            // The length rule most commands of an engine class share, so the walk can trust a
            // length guessed from dword 0 alone.
            let rule = match d.len_code {
                c if c == 8 | 2 << 5 => RULE_8_2,
                c if c == 12 | 2 << 5 => RULE_12_2,
                _ => 0,
            };
            assert!(i + 1 < 2048, "too many descriptors for the packed index");
            *slot = u32::try_from(i + 1).unwrap() << 14 | flags | rule | d.len_code;
            owner_bits[k] = specificity;
        }
    }
    table
}

fn main() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    for f in ["gen8-commands.csv", "gen9-commands.csv", "gvt-cmd-table.csv", "blitter-commands.csv"] {
        println!("cargo:rerun-if-changed=data/{f}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let mut out = String::from("// Generated by build.rs from data/*.csv. Do not edit.\n");
    gen_tables(8, &data, &mut out);
    gen_tables(9, &data, &mut out);
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("cmd_tables.rs");
    std::fs::write(dest, out).unwrap();
}
