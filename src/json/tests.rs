//! Tests of the JSON reader and writer: fixed cases for each rule, then seeded
//! property tests — generated values round-trip through the writer, mutated and random
//! texts never panic the reader, and the reader accepts exactly what serde_json (the
//! reference, a dev-dependency) accepts, apart from the two rules that are stricter here
//! (duplicate members, nesting depth).

use super::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

fn render(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(t) => t.clone(),
        Value::String(s) => string(s),
        Value::Array(a) => array(a.iter().map(render)),
        Value::Object(m) => {
            let mut o = Object::new();
            for (k, v) in m {
                o = o.raw(k, &render(v));
            }
            o.finish()
        }
    }
}

fn gen_string(r: &mut Rng) -> String {
    const PIECES: [&str; 12] = [
        "a", "conv_fwd", " ", "\"", "\\", "\n", "\u{1}", "é", "𝄞", "/", "\u{7f}", "x:y",
    ];
    (0..r.below(6))
        .map(|_| PIECES[r.below(PIECES.len())])
        .collect()
}

fn gen_number(r: &mut Rng) -> String {
    const NUMS: [&str; 12] = [
        "0",
        "-0",
        "1",
        "42",
        "-7",
        "3.25",
        "1e-7",
        "2.5E+20",
        "0.001",
        "18446744073709551615",
        "1e300",
        "-0.5e-3",
    ];
    if r.chance(50) {
        NUMS[r.below(NUMS.len())].to_string()
    } else {
        (r.next() >> r.below(64)).to_string()
    }
}

fn gen_value(r: &mut Rng, depth: usize) -> Value {
    let leaf = depth >= 4 || r.chance(40);
    match (leaf, r.below(6)) {
        (true, 0) => Value::Null,
        (true, 1) => Value::Bool(r.chance(50)),
        (true, 2) | (true, 3) => Value::Number(gen_number(r)),
        (true, _) => Value::String(gen_string(r)),
        (false, k) if k % 2 == 0 => {
            Value::Array((0..r.below(4)).map(|_| gen_value(r, depth + 1)).collect())
        }
        (false, _) => {
            let mut m: Vec<(String, Value)> = Vec::new();
            for i in 0..r.below(4) {
                let key = format!("{}{i}", gen_string(r));
                m.push((key, gen_value(r, depth + 1)));
            }
            Value::Object(m)
        }
    }
}

/// Changes `text` the way a damaged or hand-edited file would be.
fn mutate(r: &mut Rng, text: &str) -> String {
    const INSERTS: [&str; 16] = [
        ",", "]", "}", "[", "{", "\"", "\\", ":", "0", "-", ".", "e", "tru", "nul", "\t", "//",
    ];
    let mut s: Vec<char> = text.chars().collect();
    for _ in 0..1 + r.below(3) {
        let at = if s.is_empty() {
            0
        } else {
            r.below(s.len() + 1)
        };
        match r.below(4) {
            0 if !s.is_empty() => {
                s.remove(at.min(s.len() - 1));
            }
            1 => {
                for c in INSERTS[r.below(INSERTS.len())].chars().rev() {
                    s.insert(at, c);
                }
            }
            2 if !s.is_empty() => {
                s.truncate(at);
            }
            _ => {
                let c = char::from_u32(r.below(0x80) as u32).unwrap_or('x');
                if at < s.len() {
                    s[at] = c;
                } else {
                    s.push(c);
                }
            }
        }
    }
    s.into_iter().collect()
}

fn depth_of(v: &serde_json::Value) -> usize {
    match v {
        serde_json::Value::Array(a) => 1 + a.iter().map(depth_of).max().unwrap_or(0),
        serde_json::Value::Object(m) => 1 + m.values().map(depth_of).max().unwrap_or(0),
        _ => 0,
    }
}

/// Our value equals serde_json's (numbers compared as f64, members in any order).
fn same(ours: &Value, theirs: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (ours, theirs) {
        (Value::Null, J::Null) => true,
        (Value::Bool(a), J::Bool(b)) => a == b,
        (Value::Number(t), J::Number(n)) => {
            // serde_json's default float parser may be one ulp off.
            let close = match (t.parse::<f64>(), n.as_f64()) {
                (Ok(a), Some(b)) => (a - b).abs() <= 1e-15 * a.abs().max(b.abs()),
                _ => false,
            };
            close || n.as_u64().is_some_and(|u| Some(u) == ours.as_u64())
        }
        (Value::String(a), J::String(b)) => a == b,
        (Value::Array(a), J::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same(x, y))
        }
        (Value::Object(a), J::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| same(v, w)))
        }
        _ => false,
    }
}

/// The differential property for one text; returns whether it was accepted.
fn agrees_with_serde(text: &str) -> bool {
    let ours = parse(text);
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(theirs) => {
            let dup = ours
                .as_ref()
                .err()
                .is_some_and(|e| e.message.starts_with("duplicate member"));
            if dup || depth_of(&theirs) > MAX_DEPTH {
                assert!(ours.is_err(), "accepted {text:?}");
                return false;
            }
            let v = ours.unwrap_or_else(|e| panic!("rejected {text:?} ({e}), serde accepts it"));
            assert!(same(&v, &theirs), "{text:?}: {v:?} vs {theirs:?}");
            true
        }
        Err(e) if e.to_string().contains("out of range") => false, // 1e400: a number here
        Err(_) => {
            assert!(ours.is_err(), "accepted {text:?}, which is not JSON");
            false
        }
    }
}

#[test]
fn reads_every_kind_of_value() {
    let v = parse(r#" {"a": [1, -2.5e3, true, false, null], "b": {"c": "x\"\\\/\b\f\n\r\t\u00e9\ud834\udd1e"}} "#)
        .unwrap();
    let a = v.get("a").unwrap().as_array().unwrap();
    assert_eq!(a[0].as_u64(), Some(1));
    assert_eq!(a[1].as_f64(), Some(-2500.0));
    assert_eq!(a[1].as_u64(), None);
    assert_eq!(a[2].as_bool(), Some(true));
    assert_eq!(a[4], Value::Null);
    assert_eq!(
        v.get("b").unwrap().get("c").unwrap().as_str(),
        Some("x\"\\/\u{8}\u{c}\n\r\té𝄞")
    );
    assert_eq!(v.get("missing"), None);
}

#[test]
fn integers_are_exact_and_fractions_are_not_integers() {
    assert_eq!(
        parse("18446744073709551615").unwrap().as_u64(),
        Some(u64::MAX)
    );
    assert_eq!(parse("18446744073709551616").unwrap().as_u64(), None);
    assert_eq!(parse("3.0").unwrap().as_u64(), None);
    assert_eq!(parse("3e0").unwrap().as_u64(), None);
    assert_eq!(parse("-3").unwrap().as_u64(), None);
    assert_eq!(parse("1e400").unwrap().as_f64(), None);
}

#[test]
fn rejects_what_json_does_not_allow() {
    for bad in [
        "",
        " ",
        "[1,]",
        "{\"a\":1,}",
        "01",
        "-",
        "1.",
        ".5",
        "+1",
        "1e",
        "NaN",
        "Infinity",
        "'a'",
        "\"a\tb\"",
        "\"\\x\"",
        "\"\\ud800\"",
        "\"\\udc00\"",
        "\"\\ud800\\u0041\"",
        "\"\\u12\"",
        "{a:1}",
        "{\"a\" 1}",
        "[1 2]",
        "// c\n1",
        "1 2",
        "{\"a\":1,\"a\":1}",
        "[\"unterminated",
        "tru",
        "nulls",
        "\u{feff}1",
    ] {
        assert!(parse(bad).is_err(), "accepted {bad:?}");
        agrees_with_serde(bad);
    }
}

#[test]
fn depth_and_length_are_bounded() {
    let ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    assert!(parse(&ok).is_ok());
    let deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    assert!(parse(&deep).unwrap_err().message.contains("nested deeper"));
    // Far deeper than any stack could recurse: rejected at the limit, no overflow.
    assert!(parse(&"[{\"a\":".repeat(200_000)).is_err());
    let long = format!("\"{}\"", "a".repeat(MAX_LEN));
    assert!(parse(&long).unwrap_err().message.contains("longer than"));
}

#[test]
fn writer_escapes_and_formats() {
    let o = Object::new()
        .str("s", "a\"b\\c\nd\u{1}\u{7f}é")
        .uint("u", 7)
        .float("f", 0.1)
        .float("nan", f64::NAN)
        .bool("b", false)
        .raw("a", &uints(&[1, 2]))
        .finish();
    assert_eq!(
        o,
        r#"{"s":"a\"b\\c\nd\u0001\u007fé","u":7,"f":0.1,"nan":null,"b":false,"a":[1,2]}"#
    );
    let v = parse(&o).unwrap();
    assert_eq!(v.get("s").unwrap().as_str(), Some("a\"b\\c\nd\u{1}\u{7f}é"));
    assert_eq!(float(1e-7), "1e-7");
    assert_eq!(parse(&float(1e-7)).unwrap().as_f64(), Some(1e-7));
    assert_eq!(Object::new().finish(), "{}");
}

const CASES: usize = 20_000;

#[test]
fn generated_values_round_trip_20000_cases() {
    let mut r = Rng(0x4A53_4F4E_0001);
    for _ in 0..CASES {
        let v = gen_value(&mut r, 0);
        let text = render(&v);
        assert_eq!(parse(&text).as_ref(), Ok(&v), "{text}");
        assert!(agrees_with_serde(&text) || text.contains("1e300"));
    }
}

#[test]
fn mutated_texts_agree_with_serde_json_20000_cases() {
    let mut r = Rng(0x4A53_4F4E_0002);
    let mut accepted = 0;
    for _ in 0..CASES {
        let valid = render(&gen_value(&mut r, 0));
        let text = mutate(&mut r, &valid);
        if agrees_with_serde(&text) {
            accepted += 1;
        }
    }
    // Both outcomes must be exercised for the property to mean anything.
    println!("{accepted} of {CASES} mutated texts were still JSON");
    assert!(accepted > CASES / 20 && accepted < CASES * 19 / 20);
}

#[test]
fn random_texts_never_panic_20000_cases() {
    const ALPHABET: &[u8] = b"{}[]\",:\\-+.0123456789eEtrufalsn \t\nu\x01a";
    let mut r = Rng(0x4A53_4F4E_0003);
    for _ in 0..CASES {
        let len = r.below(40);
        let text: String = (0..len)
            .map(|_| ALPHABET[r.below(ALPHABET.len())] as char)
            .collect();
        agrees_with_serde(&text);
    }
}
