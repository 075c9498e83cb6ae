//! Tests of routes-file reading: valid files (blank lines, CRLF, extra members, repeated
//! lines), each way a file can be malformed, and a seeded fuzz of damaged files — any
//! bytes give a table of valid configurations or an error naming a line, never a panic.

use super::*;
use crate::describe::{conv_problem, ConvDesc, Direction, TensorDesc};
use crate::ffi::miopen::miopenConvolution;
use crate::layout::DType;

fn config(direction: Direction, k: usize) -> ConvConfig {
    let c = ConvDesc {
        mode: miopenConvolution,
        pads: vec![1, 1],
        strides: vec![1, 1],
        dilations: vec![1, 1],
        groups: 1,
    };
    let p = conv_problem(
        direction,
        &c,
        &TensorDesc::packed(DType::F32, &[2, 3, 8, 8]),
        &TensorDesc::packed(DType::F32, &[k, 3, 3, 3]),
        &TensorDesc::packed(DType::F32, &[2, k, 8, 8]),
    )
    .unwrap();
    ConvConfig::of(&p, false)
}

fn line(c: &ConvConfig, route: &str) -> String {
    c.key_members(json::Object::new())
        .uint("calls", 12)
        .str("verdict", "works")
        .str("route", route)
        .finish()
}

#[test]
fn reads_a_file_with_blank_lines_crlf_and_extra_members() {
    let (a, b, c) = (
        config(Direction::Forward, 8),
        config(Direction::BackwardData, 8),
        config(Direction::BackwardWeights, 8),
    );
    let text = format!(
        "{}\r\n\n   \n{}\n{}\n{}",
        line(&a, "gpu"),
        line(&b, "cpu"),
        line(&c, "gpu"),
        line(&a, "gpu") // the same route twice is fine
    );
    let r = Routes::parse(text.as_bytes()).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r.get(&a), Some((Target::Gpu, 1)));
    assert_eq!(r.get(&b), Some((Target::Cpu, 4)));
    assert_eq!(r.get(&c), Some((Target::Gpu, 5)));
    assert_eq!(r.counts(), (1, 2));
    // Same layer shape with another output channel count: not listed.
    assert_eq!(r.get(&config(Direction::Forward, 4)), None);
    assert!(Routes::parse(b"").unwrap().is_empty());
}

#[test]
fn each_kind_of_damage_names_its_line() {
    let a = config(Direction::Forward, 8);
    let good = line(&a, "gpu");
    let no_route = a.key_members(json::Object::new()).finish();
    for (text, why) in [
        (format!("{good}\n{{\"op\":"), "line 2: not a JSON object"),
        (format!("{good}\n[1, 2]"), "line 2: expected a JSON object"),
        (
            format!("{good}\n{}", good.replace("\"gpu\"", "\"GPU\"")),
            "line 2: \"route\" is \"GPU\"",
        ),
        (
            format!("{good}\n{}", good.replace("\"gpu\"", "true")),
            "line 2: \"route\" is not a string",
        ),
        (no_route, "line 1: no \"route\" member (a record file"),
        (
            format!("{good}\n{}", line(&a, "cpu")),
            "line 2: configuration",
        ),
        (good.replace("\"fp32\"", "\"int8\""), "line 1: \"dtype\""),
        (format!("# routes\n{good}"), "line 1: not a JSON object"),
        (format!("{good}\n{good},"), "line 2: not a JSON object"),
    ] {
        let e = Routes::parse(text.as_bytes()).unwrap_err();
        assert!(
            e.starts_with(why),
            "{text:?}\n  gave {e:?}\n  expected {why:?}"
        );
    }
    let e = Routes::parse(b"\n\xff\xfe\n").unwrap_err();
    assert!(e.starts_with("line 2: not UTF-8"), "{e}");
}

#[test]
fn a_missing_or_huge_file_is_an_error() {
    let e = Routes::load("/nonexistent/routes.jsonl").unwrap_err();
    assert!(e.contains("cannot read it"), "{e}");
    let dir = std::env::temp_dir().join(format!("rdna1shim-routes-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let big = dir.join("big.jsonl");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(MAX_FILE + 1).unwrap(); // sparse
    let e = Routes::load(big.to_str().unwrap()).unwrap_err();
    assert!(e.contains("at most"), "{e}");
    let ok = dir.join("ok.jsonl");
    std::fs::write(&ok, line(&config(Direction::Forward, 8), "cpu")).unwrap();
    let r = Routes::load(ok.to_str().unwrap()).unwrap();
    assert_eq!((r.len(), r.path.as_str()), (1, ok.to_str().unwrap()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn rules_say_where_a_call_went() {
    assert_eq!(
        Rule::RoutesFile { line: 3 }.to_string(),
        "routes file line 3"
    );
    let s = Rule::Switch {
        op: Op::ConvBwdData,
        target: Target::Cpu,
        unlisted: true,
    };
    assert_eq!(
        s.to_string(),
        "RDNA1SHIM_CONV_BWD_DATA=cpu, not in the routes file"
    );
    let s = Rule::Switch {
        op: Op::ConvFwd,
        target: Target::Gpu,
        unlisted: false,
    };
    assert_eq!(s.to_string(), "RDNA1SHIM_CONV_FWD=gpu");
}

const FUZZ_CASES: usize = 20_000;

#[test]
fn damaged_files_never_panic_20000_cases() {
    let mut s = 0x524F_5554_4553u64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let lines = [
        line(&config(Direction::Forward, 8), "gpu"),
        line(&config(Direction::BackwardData, 8), "cpu"),
        line(&config(Direction::BackwardWeights, 4), "gpu"),
    ];
    let good = lines.join("\n").into_bytes();
    let (mut accepted, mut rejected) = (0, 0);
    for _ in 0..FUZZ_CASES {
        let mut b = good.clone();
        for _ in 0..1 + next() % 3 {
            let at = (next() % (b.len() as u64 + 1)) as usize;
            match next() % 5 {
                0 if at < b.len() => b[at] = next() as u8, // any byte, UTF-8 or not
                // a digit changed: another size, maybe still valid
                1 if at < b.len() && b[at].is_ascii_digit() => b[at] = b'0' + (next() % 10) as u8,
                2 => b.truncate(at),
                3 => b.insert(at, b"{}[],:\"\n-0e"[(next() % 11) as usize]),
                _ if at < b.len() => {
                    b.remove(at);
                }
                _ => {}
            }
        }
        match Routes::parse(&b) {
            Ok(r) => {
                accepted += 1;
                for c in r.table.keys() {
                    assert!(c.problem().is_ok(), "accepted an invalid {c:?}");
                }
            }
            Err(e) => {
                rejected += 1;
                assert!(e.starts_with("line "), "{e}");
            }
        }
    }
    println!("{accepted} damaged files still valid, {rejected} rejected");
    assert!(accepted > 0 && rejected > FUZZ_CASES / 2);
}
