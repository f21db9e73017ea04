//! Generates the Rust side of `ebpf/include/ferroplane.h`.
//!
//! * `generated.rs`: every `enum fp_*` of the header as a Rust enum (with
//!   `name()`/`description()` taken from the enumerator comments) and every
//!   numeric `#define FP_*` as a `u32` constant. Nothing is kept in sync by hand.
//! * `c_layout.rs`: sizes, alignments and field offsets of the header's
//!   structs and the values of its enumerators, as the host C compiler sees
//!   them (a tiny C program is compiled and run). The layout test in
//!   `src/lib.rs` compares them with the `#[repr(C)]` mirrors and the
//!   generated enums.
//!
//! Header rules: one enumerator or field per line, an optional `= value`, a
//! one-line `/* description */` comment. A counter enum ends with
//! `<PREFIX>MAX`, which becomes the `COUNT` constant instead of a variant.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

struct Enumerator {
    c_name: String,
    value: i64,
    description: String,
}

struct CEnum {
    c_name: String,
    doc: String,
    prefix: String,
    entries: Vec<Enumerator>,
    /// `Some(value)` when the enum ends with `<PREFIX>MAX`.
    max: Option<i64>,
}

struct CStruct {
    c_name: String,
    fields: Vec<String>,
}

struct Define {
    name: String,
    value: u64,
    doc: String,
}

#[derive(Default)]
struct Header {
    enums: Vec<CEnum>,
    structs: Vec<CStruct>,
    defines: Vec<Define>,
}

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let include_dir = manifest.join("../../ebpf/include");
    let header_path = include_dir.join("ferroplane.h");
    println!("cargo:rerun-if-changed={}", header_path.display());
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");

    let text = fs::read_to_string(&header_path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", header_path.display()));
    let header = parse_header(&text);
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));

    fs::write(out_dir.join("generated.rs"), generate_rust(&header)).expect("write generated.rs");
    let layout = c_layout(&header, &include_dir, &out_dir);
    fs::write(out_dir.join("c_layout.rs"), layout).expect("write c_layout.rs");
}

/// Text of a `/* ... */` comment (one or more lines), without the markers and
/// the leading `*` of continuation lines.
fn comment_text(lines: &[&str]) -> String {
    let mut out = Vec::new();
    for line in lines {
        let mut l = line.trim();
        l = l.strip_prefix("/*").unwrap_or(l);
        l = l.strip_suffix("*/").unwrap_or(l);
        l = l.trim();
        l = l.strip_prefix('*').unwrap_or(l).trim();
        if !l.is_empty() {
            out.push(l.to_string());
        }
    }
    out.join(" ")
}

/// Splits `code /* comment */` into the code and the comment text.
fn split_comment(line: &str) -> (&str, Option<String>) {
    match line.find("/*") {
        Some(start) => {
            let rest = &line[start + 2..];
            let end = rest
                .find("*/")
                .unwrap_or_else(|| panic!("ferroplane.h: comment not closed on one line: {line}"));
            (line[..start].trim(), Some(rest[..end].trim().to_string()))
        }
        None => (line.trim(), None),
    }
}

fn parse_int(s: &str) -> i64 {
    let s = s.trim();
    let r = if let Some(hex) = s.strip_prefix("0x") {
        i64::from_str_radix(hex, 16)
    } else {
        s.parse()
    };
    r.unwrap_or_else(|_| panic!("ferroplane.h: not an integer: {s}"))
}

fn common_prefix(names: &[&str]) -> String {
    let first = names[0];
    let mut len = first.len();
    for n in &names[1..] {
        len = len.min(
            first
                .bytes()
                .zip(n.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    // Cut back to the last '_' so the prefix ends on a word boundary.
    let cut = first[..len].rfind('_').map_or(0, |i| i + 1);
    first[..cut].to_string()
}

fn parse_header(text: &str) -> Header {
    let lines: Vec<&str> = text.lines().collect();
    let mut header = Header::default();
    let mut pending_doc = String::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim();
        if line.starts_with("/*") {
            let start = i;
            while !lines[i].contains("*/") {
                i += 1;
            }
            pending_doc = comment_text(&lines[start..=i]);
            i += 1;
            continue;
        }
        if let Some(rest) = line.strip_prefix("#define ") {
            let (code, comment) = split_comment(rest);
            let mut parts = code.split_whitespace();
            if let (Some(name), Some(value), None) = (parts.next(), parts.next(), parts.next()) {
                if name.starts_with("FP_") && value.chars().all(|c| c.is_ascii_digit()) {
                    let doc = comment.unwrap_or_else(|| pending_doc.clone());
                    header.defines.push(Define {
                        name: name.to_string(),
                        value: value.parse().expect("digits"),
                        doc,
                    });
                }
            }
        } else if let Some(name) = line
            .strip_prefix("enum ")
            .and_then(|l| l.strip_suffix('{'))
            .map(str::trim)
        {
            let mut body = Vec::new();
            i += 1;
            while lines[i].trim() != "};" {
                body.push(lines[i]);
                i += 1;
            }
            header
                .enums
                .push(parse_enum(name, std::mem::take(&mut pending_doc), &body));
        } else if let Some(name) = line
            .strip_prefix("struct ")
            .and_then(|l| l.strip_suffix('{'))
            .map(str::trim)
        {
            let mut fields = Vec::new();
            i += 1;
            while lines[i].trim() != "};" {
                let (code, _) = split_comment(lines[i]);
                if !code.is_empty() {
                    let code = code
                        .strip_suffix(';')
                        .unwrap_or_else(|| panic!("ferroplane.h: one field per line: {code}"));
                    let last = code.split_whitespace().last().expect("field name");
                    // Arrays of scalars (`__u8 mac[6]`): the field is the name before `[`.
                    let field = last.split('[').next().unwrap_or(last);
                    assert!(
                        field.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                        "ferroplane.h: only scalar fields and arrays of scalars are supported: {code}"
                    );
                    fields.push(field.to_string());
                }
                i += 1;
            }
            header.structs.push(CStruct {
                c_name: name.to_string(),
                fields,
            });
        }
        if !line.is_empty() {
            pending_doc.clear();
        }
        i += 1;
    }
    header
}

fn parse_enum(name: &str, doc: String, body: &[&str]) -> CEnum {
    let mut raw: Vec<(String, i64, Option<String>)> = Vec::new();
    let mut next = 0i64;
    for line in body {
        let t = line.trim();
        if t.is_empty() || t.starts_with("/*") || t.starts_with('*') {
            continue;
        }
        let (code, comment) = split_comment(t);
        let code = code.trim_end_matches(',').trim();
        let (c_name, value) = match code.split_once('=') {
            Some((n, v)) => (n.trim().to_string(), parse_int(v)),
            None => (code.to_string(), next),
        };
        next = value + 1;
        raw.push((c_name, value, comment));
    }
    assert!(!raw.is_empty(), "ferroplane.h: empty enum {name}");
    let names: Vec<&str> = raw.iter().map(|(n, _, _)| n.as_str()).collect();
    let prefix = if names.len() > 1 {
        common_prefix(&names)
    } else {
        String::new()
    };
    let mut max = None;
    if let Some((last, value, _)) = raw.last() {
        if *last == format!("{prefix}MAX") {
            max = Some(*value);
        }
    }
    if max.is_some() {
        raw.pop();
    }
    let entries = raw
        .into_iter()
        .map(|(c_name, value, comment)| Enumerator {
            description: comment.unwrap_or_else(|| {
                panic!("ferroplane.h: enumerator {c_name} needs a /* description */ comment")
            }),
            c_name,
            value,
        })
        .collect();
    CEnum {
        c_name: name.to_string(),
        doc,
        prefix,
        entries,
        max,
    }
}

fn camel(snake: &str) -> String {
    snake
        .split('_')
        .filter(|w| !w.is_empty())
        .map(|w| {
            let lower = w.to_ascii_lowercase();
            let mut c = lower.chars();
            match c.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + c.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn generate_rust(h: &Header) -> String {
    let mut s =
        String::from("// @generated by build.rs from ebpf/include/ferroplane.h. Do not edit.\n\n");
    for d in &h.defines {
        writeln!(s, "/// {} (`{}` in ferroplane.h)", d.doc, d.name).unwrap();
        writeln!(s, "pub const {}: u32 = {};\n", d.name, d.value).unwrap();
    }
    for e in &h.enums {
        let ty = camel(&e.c_name);
        let n = e.entries.len();
        let doc = if e.doc.is_empty() {
            format!("`enum {}` of ferroplane.h.", e.c_name)
        } else {
            format!("{} (`enum {}` in ferroplane.h)", e.doc, e.c_name)
        };
        writeln!(s, "/// {doc}").unwrap();
        s.push_str(
            "#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]\n#[repr(u32)]\n",
        );
        writeln!(s, "pub enum {ty} {{").unwrap();
        for en in &e.entries {
            let variant = camel(&en.c_name[e.prefix.len()..]);
            writeln!(s, "    /// {} (`{}`)", en.description, en.c_name).unwrap();
            writeln!(s, "    {variant} = {},", en.value).unwrap();
        }
        s.push_str("}\n\n");
        writeln!(s, "impl {ty} {{").unwrap();
        if let Some(max) = e.max {
            writeln!(
                s,
                "    /// Number of counters (`{}MAX`): the length of the per-CPU array indexed by this enum.",
                e.prefix
            )
            .unwrap();
            writeln!(s, "    pub const COUNT: usize = {max};").unwrap();
        }
        s.push_str("    /// Every value, in declaration order.\n");
        write!(s, "    pub const ALL: [Self; {n}] = [").unwrap();
        for en in &e.entries {
            write!(s, "Self::{}, ", camel(&en.c_name[e.prefix.len()..])).unwrap();
        }
        s.push_str("];\n\n");
        let arms = |f: &dyn Fn(&Enumerator) -> String| {
            let mut a = String::new();
            for en in &e.entries {
                writeln!(
                    a,
                    "            Self::{} => {},",
                    camel(&en.c_name[e.prefix.len()..]),
                    f(en)
                )
                .unwrap();
            }
            a
        };
        s.push_str("    /// Short snake_case name (the C name without its prefix), for counters and logs.\n");
        s.push_str("    pub const fn name(self) -> &'static str {\n        match self {\n");
        s.push_str(&arms(&|en| {
            format!("{:?}", en.c_name[e.prefix.len()..].to_ascii_lowercase())
        }));
        s.push_str("        }\n    }\n\n");
        s.push_str("    /// One-line description, from the comment in ferroplane.h.\n");
        s.push_str("    pub const fn description(self) -> &'static str {\n        match self {\n");
        s.push_str(&arms(&|en| format!("{:?}", en.description)));
        s.push_str("        }\n    }\n\n");
        s.push_str("    /// The enumerator's name in ferroplane.h.\n");
        s.push_str("    pub const fn c_name(self) -> &'static str {\n        match self {\n");
        s.push_str(&arms(&|en| format!("{:?}", en.c_name)));
        s.push_str("        }\n    }\n\n");
        s.push_str("    /// The numeric value (the map index for counter enums).\n");
        s.push_str("    pub const fn as_u32(self) -> u32 {\n        self as u32\n    }\n\n");
        s.push_str("    /// The value whose number is `v`, if any.\n");
        s.push_str("    pub const fn from_u32(v: u32) -> Option<Self> {\n        match v {\n");
        for en in &e.entries {
            writeln!(
                s,
                "            {} => Some(Self::{}),",
                en.value,
                camel(&en.c_name[e.prefix.len()..])
            )
            .unwrap();
        }
        s.push_str("            _ => None,\n        }\n    }\n}\n\n");
        writeln!(s, "impl core::fmt::Display for {ty} {{").unwrap();
        s.push_str("    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {\n");
        s.push_str("        f.write_str(self.name())\n    }\n}\n\n");
    }
    s
}

/// Compiles and runs a C program that prints the layout of the header's
/// structs and the values of its enumerators as Rust source.
fn c_layout(h: &Header, include_dir: &Path, out_dir: &Path) -> String {
    let mut c = String::from(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"ferroplane.h\"\n\nint main(void)\n{\n",
    );
    c.push_str("\tprintf(\"const C_STRUCTS: &[CStructLayout] = &[\\n\");\n");
    for st in &h.structs {
        let n = &st.c_name;
        writeln!(
            c,
            "\tprintf(\"    CStructLayout {{ name: \\\"{n}\\\", size: %zu, align: %zu, fields: &[\\n\", sizeof(struct {n}), _Alignof(struct {n}));"
        )
        .unwrap();
        for f in &st.fields {
            writeln!(
                c,
                "\tprintf(\"        (\\\"{f}\\\", %zu, %zu),\\n\", offsetof(struct {n}, {f}), sizeof(((struct {n} *)0)->{f}));"
            )
            .unwrap();
        }
        c.push_str("\tprintf(\"    ] },\\n\");\n");
    }
    c.push_str("\tprintf(\"];\\n\\nconst C_ENUM_VALUES: &[(&str, i64)] = &[\\n\");\n");
    for e in &h.enums {
        let mut names: Vec<&str> = e.entries.iter().map(|en| en.c_name.as_str()).collect();
        let max_name = format!("{}MAX", e.prefix);
        if e.max.is_some() {
            names.push(&max_name);
        }
        for name in names {
            writeln!(
                c,
                "\tprintf(\"    (\\\"{name}\\\", %lld),\\n\", (long long){name});"
            )
            .unwrap();
        }
    }
    c.push_str("\tprintf(\"];\\n\\nconst C_DEFINES: &[(&str, u64)] = &[\\n\");\n");
    for d in &h.defines {
        writeln!(
            c,
            "\tprintf(\"    (\\\"{0}\\\", %llu),\\n\", (unsigned long long){0});",
            d.name
        )
        .unwrap();
    }
    c.push_str("\tprintf(\"];\\n\");\n\treturn 0;\n}\n");

    let src = out_dir.join("c_layout.c");
    let exe = out_dir.join("c_layout");
    fs::write(&src, c).expect("write c_layout.c");
    let cc = env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let status = Command::new(&cc)
        .arg("-std=c11")
        .arg("-Wall")
        .arg("-Werror")
        .arg("-I")
        .arg(include_dir)
        .arg(&src)
        .arg("-o")
        .arg(&exe)
        .status()
        .unwrap_or_else(|e| panic!("running the host C compiler `{cc}`: {e}"));
    assert!(
        status.success(),
        "`{cc}` failed to compile {}",
        src.display()
    );
    let out = Command::new(&exe)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()));
    assert!(out.status.success(), "{} failed", exe.display());
    String::from_utf8(out.stdout).expect("c_layout output is UTF-8")
}
