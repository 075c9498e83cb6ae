//! Times the CPU convolution engine on a yardstick of real layers.
//!
//! ```text
//! cargo run --release --bin conv_bench -- [--threads N] [--layer SUBSTRING]
//!     [--pass forward|backward_data|backward_weights] [--isa avx512|avx2|portable]
//!     [--json] [--min-ms MS] [--retries N] [--batch N] [--set yardstick|cifar]
//!     [--list] [--serve]
//! ```
//! `--batch N` runs every selected layer at batch N instead of its own (the
//! name's `bNN` says which): a training step's batch rather than the yardstick's.
//! `--set cifar` replaces the yardstick by the six distinct convolutions of
//! CIFAR-10's ResNet-20 (32×32 images, 16 to 64 channels, batch 32): the
//! small layers of the networks most people train first.
//! `--isa` caps the engine's instruction set like the shim's `RDNA1SHIM_MAX_ISA`
//! (which it reads when the flag is absent); the FMA peak is then measured at
//! that instruction set, so an AVX2-capped run on an AVX-512 CPU reports its
//! share of the AVX2 peak.
//! For each layer and pass: one warm-up call, then the best of several timed
//! calls (at least 3, more for fast layers). Prints GFLOP/s (2 · multiply-adds
//! per second, the same count for all three passes), its share of the FMA
//! peak measured on the same threads, and the peak extra memory of the pass (VmHWM growth over the resident size before it, Linux only).
//! When other processes used more than 5% of the machine during a pass, it
//! is timed again (keeping the best) up to `--retries` times; passes that
//! never ran undisturbed are marked `busy`.
//! `--json` prints one object per line instead of a table; `--list` prints
//! the selected layer-passes' geometry as JSON without timing them; `--serve`
//! times one layer-pass per request line (`<layer name>\t<pass>`) read from
//! stdin and answers each with a JSON line (the request `peak` answers with
//! the threads' FMA peak) — `scripts/bench_vs_torch.py`
//! uses it to interleave the engine's measurements with PyTorch's.
//!
//! The DCGAN layer is a 4x4/2 transposed convolution 512 → 256 from 4x4 to 8x8,
//! given here as the regular convolution 256 → 512 from 8x8 to 4x4 it is the
//! transpose of: the transposed layer's forward pass is `backward_data` here
//! and its data gradient is `forward`.

use std::time::Instant;

use rdna1shim::cpu::conv;
use rdna1shim::cpu::{ConvShape, Isa};

struct Layer {
    name: String,
    shape: ConvShape,
}

#[allow(clippy::too_many_arguments)]
fn conv2d(
    n: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    hw: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dil: usize,
) -> ConvShape {
    conv3d(
        n,
        c_in,
        c_out,
        groups,
        [1, hw, hw],
        [1, k, k],
        [1, stride, stride],
        [0, pad, pad],
        [1, dil, dil],
    )
}

#[allow(clippy::too_many_arguments)]
fn conv3d(
    n: usize,
    c_in: usize,
    c_out: usize,
    groups: usize,
    input: [usize; 3],
    kernel: [usize; 3],
    stride: [usize; 3],
    pad: [usize; 3],
    dilation: [usize; 3],
) -> ConvShape {
    let output =
        ConvShape::forward_output(input, kernel, pad, stride, dilation).expect("valid layer");
    let s = ConvShape {
        n,
        c_in,
        c_out,
        groups,
        input,
        kernel,
        output,
        pad,
        stride,
        dilation,
    };
    s.validate().expect("valid layer");
    s
}

/// `l` at batch `n`, its name's trailing `bNN` saying so.
fn with_batch(l: Layer, n: usize) -> Layer {
    let base = l.name.rsplit_once(" b").map_or(l.name.as_str(), |(b, _)| b);
    Layer {
        name: format!("{base} b{n}"),
        shape: ConvShape { n, ..l.shape },
    }
}

/// A named layer.
fn layer(name: &str, shape: ConvShape) -> Layer {
    Layer {
        name: name.to_string(),
        shape,
    }
}

fn yardstick() -> Vec<Layer> {
    let l = layer;
    vec![
        l(
            "mnist.conv1 1->32 3x3 28x28 b64",
            conv2d(64, 1, 32, 1, 28, 3, 1, 0, 1),
        ),
        l(
            "mnist.conv2 32->64 3x3 26x26 b64",
            conv2d(64, 32, 64, 1, 26, 3, 1, 0, 1),
        ),
        l(
            "mnist.conv3 64->64 3x3/2 24x24 b64",
            conv2d(64, 64, 64, 1, 24, 3, 2, 1, 1),
        ),
        l(
            "resnet18.stem 3->64 7x7/2 224 b8",
            conv2d(8, 3, 64, 1, 224, 7, 2, 3, 1),
        ),
        l(
            "resnet18.conv 64 3x3 56 b8",
            conv2d(8, 64, 64, 1, 56, 3, 1, 1, 1),
        ),
        l(
            "resnet18.conv 128 3x3 28 b8",
            conv2d(8, 128, 128, 1, 28, 3, 1, 1, 1),
        ),
        l(
            "resnet18.conv 256 3x3 14 b8",
            conv2d(8, 256, 256, 1, 14, 3, 1, 1, 1),
        ),
        l(
            "resnet18.conv 512 3x3 7 b8",
            conv2d(8, 512, 512, 1, 7, 3, 1, 1, 1),
        ),
        l(
            "resnet18.down 64->128 3x3/2 56 b8",
            conv2d(8, 64, 128, 1, 56, 3, 2, 1, 1),
        ),
        l(
            "resnet18.down 64->128 1x1/2 56 b8",
            conv2d(8, 64, 128, 1, 56, 1, 2, 0, 1),
        ),
        l(
            "resnet50.1x1 256->64 56 b8",
            conv2d(8, 256, 64, 1, 56, 1, 1, 0, 1),
        ),
        l(
            "mobilenetv2.dw 144 3x3 56 b8",
            conv2d(8, 144, 144, 144, 56, 3, 1, 1, 1),
        ),
        l(
            "deeplab.dilated 256 3x3 d2 33 b4",
            conv2d(4, 256, 256, 1, 33, 3, 1, 2, 2),
        ),
        l(
            "dcgan.convT 512->256 4x4/2 4->8 b64",
            conv2d(64, 256, 512, 1, 8, 4, 2, 1, 1),
        ),
        l(
            "audio.conv1d 128->128 k5 L4000 b8",
            conv3d(
                8,
                128,
                128,
                1,
                [1, 1, 4000],
                [1, 1, 5],
                [1, 1, 1],
                [0, 0, 2],
                [1, 1, 1],
            ),
        ),
        l(
            "conv3d 3->64 3x3x3 16x56x56 b2",
            conv3d(
                2,
                3,
                64,
                1,
                [16, 56, 56],
                [3, 3, 3],
                [1, 1, 1],
                [1, 1, 1],
                [1, 1, 1],
            ),
        ),
    ]
}

/// The distinct convolutions of CIFAR-10's ResNet-20 (He et al. 2016, §4.2)
/// at batch 32: the 3 → 16 stem, the 3×3 layers of its three stages and the
/// strided first layers of the second and third.
fn cifar() -> Vec<Layer> {
    // (name, input channels, output channels, image side, stride): 3×3
    // kernels, padding 1, batch 32.
    [
        ("cifar.stem 3->16 3x3 32 b32", 3, 16, 32, 1),
        ("cifar.conv 16 3x3 32 b32", 16, 16, 32, 1),
        ("cifar.down 16->32 3x3/2 32 b32", 16, 32, 32, 2),
        ("cifar.conv 32 3x3 16 b32", 32, 32, 16, 1),
        ("cifar.down 32->64 3x3/2 16 b32", 32, 64, 16, 2),
        ("cifar.conv 64 3x3 8 b32", 64, 64, 8, 1),
    ]
    .into_iter()
    .map(|(name, c_in, c_out, hw, stride)| {
        layer(name, conv2d(32, c_in, c_out, 1, hw, 3, stride, 1, 1))
    })
    .collect()
}

const PASSES: [&str; 3] = ["forward", "backward_data", "backward_weights"];

struct Args {
    threads: Option<usize>,
    layer: Option<String>,
    pass: Option<String>,
    json: bool,
    list: bool,
    serve: bool,
    min_ms: f64,
    retries: usize,
    isa: Option<Isa>,
    batch: Option<usize>,
    /// The CIFAR-10 ResNet-20 layers instead of the yardstick.
    cifar: bool,
}

fn parse_args() -> Args {
    let mut a = Args {
        threads: None,
        layer: None,
        pass: None,
        json: false,
        list: false,
        serve: false,
        min_ms: 300.0,
        retries: 4,
        isa: None,
        batch: None,
        cifar: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| {
            it.next()
                .unwrap_or_else(|| die(&format!("{flag} needs a value")))
        };
        match arg.as_str() {
            "--threads" => {
                a.threads = Some(
                    value("--threads")
                        .parse()
                        .unwrap_or_else(|_| die("bad --threads")),
                )
            }
            "--layer" => a.layer = Some(value("--layer")),
            "--pass" => a.pass = Some(value("--pass")),
            "--min-ms" => {
                a.min_ms = value("--min-ms")
                    .parse()
                    .unwrap_or_else(|_| die("bad --min-ms"))
            }
            "--batch" => {
                a.batch = Some(
                    value("--batch")
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .unwrap_or_else(|| die("bad --batch")),
                )
            }
            "--retries" => {
                a.retries = value("--retries")
                    .parse()
                    .unwrap_or_else(|_| die("bad --retries"))
            }
            "--isa" => {
                let v = value("--isa");
                a.isa = Some(Isa::parse(&v).unwrap_or_else(|| {
                    die(&format!("bad --isa {v:?} (use avx512, avx2 or portable)"))
                }))
            }
            "--set" => match value("--set").as_str() {
                "yardstick" => a.cifar = false,
                "cifar" => a.cifar = true,
                v => die(&format!("bad --set {v:?} (use yardstick or cifar)")),
            },
            "--json" => a.json = true,
            "--list" => a.list = true,
            "--serve" => a.serve = true,
            "-h" | "--help" => {
                println!(
                    "usage: conv_bench [--threads N] [--layer SUBSTRING] [--pass NAME] [--isa avx512|avx2|portable] [--json] [--list] [--serve] [--min-ms MS] [--retries N] [--batch N] [--set yardstick|cifar]"
                );
                std::process::exit(0);
            }
            other => die(&format!("unknown argument {other}")),
        }
    }
    if a.isa.is_none() {
        if let Ok(v) = std::env::var("RDNA1SHIM_MAX_ISA") {
            if !v.trim().is_empty() {
                a.isa = Some(Isa::parse(&v).unwrap_or_else(|| {
                    die(&format!(
                        "bad RDNA1SHIM_MAX_ISA={v:?} (use avx512, avx2 or portable)"
                    ))
                }));
            }
        }
    }
    a
}

fn die(msg: &str) -> ! {
    eprintln!("conv_bench: {msg}");
    std::process::exit(2)
}

/// A value from /proc/self/status in KiB (`VmRSS`, `VmHWM`), if available.
fn proc_status_kib(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time (in clock ticks) the whole machine spent busy and in total, and
/// the time this process used, from /proc (Linux only).
fn cpu_ticks() -> Option<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = cpu.iter().take(8).sum();
    let idle = cpu.get(3)? + cpu.get(4)?;
    let own = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesised command name start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let f: Vec<&str> = own[own.rfind(')')? + 2..].split_whitespace().collect();
    let ticks = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok());
    Some((total - idle, total, ticks(14)? + ticks(15)?))
}

/// Share of the machine's CPU time that other processes used between two
/// [`cpu_ticks`] samples.
fn foreign_load(a: Option<(u64, u64, u64)>, b: Option<(u64, u64, u64)>) -> Option<f64> {
    let ((busy0, total0, own0), (busy1, total1, own1)) = (a?, b?);
    let total = total1.checked_sub(total0)?;
    if total == 0 {
        return None;
    }
    let foreign = (busy1 - busy0).saturating_sub(own1 - own0);
    Some(foreign as f64 / total as f64)
}

/// Resets VmHWM to the current RSS (Linux `clear_refs` value 5).
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn filled(len: usize, seed: u64) -> Vec<f32> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

struct Buffers {
    x: Vec<f32>,
    w: Vec<f32>,
    dy: Vec<f32>,
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

fn run_pass(s: &ConvShape, pass: &str, b: &mut Buffers) {
    match pass {
        "forward" => conv::forward(s, &b.x, &b.w, &mut b.y),
        "backward_data" => conv::backward_data(s, &b.dy, &b.w, &mut b.dx),
        _ => conv::backward_weights(s, &b.x, &b.dy, &mut b.dw),
    }
}

/// One timed pass: best seconds, the share of the machine other processes
/// used (when known) and the extra memory in MiB (when known).
struct Timing {
    best: f64,
    load: Option<f64>,
    extra_mib: Option<f64>,
}

impl Timing {
    fn busy(&self) -> bool {
        self.load.is_some_and(|l| l >= 0.05)
    }
}

fn time_pass(
    pool: &rayon::ThreadPool,
    s: &ConvShape,
    pass: &str,
    b: &mut Buffers,
    args: &Args,
) -> Timing {
    pool.install(conv::release_scratch);
    let rss0 = if reset_peak() {
        proc_status_kib("VmRSS:")
    } else {
        None
    };
    let t0 = Instant::now();
    pool.install(|| run_pass(s, pass, b));
    let warm = t0.elapsed().as_secs_f64();
    let runs = ((args.min_ms / 1e3 / warm.max(1e-6)).ceil() as usize).clamp(3, 50);
    // Other processes on the machine skew timings: measure again (up to
    // `--retries` times, keeping the best) while they used more than 5%.
    let mut best = f64::INFINITY;
    let mut load = None;
    for attempt in 0..=args.retries {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
        let before = cpu_ticks();
        for _ in 0..runs {
            let t = Instant::now();
            pool.install(|| run_pass(s, pass, b));
            best = best.min(t.elapsed().as_secs_f64());
        }
        load = foreign_load(before, cpu_ticks());
        if load.is_none_or(|l| l < 0.05) {
            break;
        }
    }
    let extra_mib = match (rss0, proc_status_kib("VmHWM:")) {
        (Some(r), Some(h)) => Some(h.saturating_sub(r) as f64 / 1024.0),
        _ => None,
    };
    Timing {
        best,
        load,
        extra_mib,
    }
}

fn buffers(s: &ConvShape) -> Buffers {
    Buffers {
        x: filled(s.input_len(), 1),
        w: filled(s.weight_len(), 2),
        dy: filled(s.output_len(), 3),
        // Filled, not zeroed: untouched pages would count as extra memory.
        y: filled(s.output_len(), 4),
        dx: filled(s.input_len(), 5),
        dw: filled(s.weight_len(), 6),
    }
}

/// One JSON object: the layer, the pass, its geometry and, when timed, the
/// result.
fn json_line(layer: &Layer, pass: &str, threads: usize, t: Option<&Timing>) -> String {
    let s = &layer.shape;
    let timing = t.map_or(String::new(), |t| {
        format!(
            "\"gflops\":{:.3},\"ms\":{:.4},\"extra_mib\":{},\"busy\":{},",
            s.flops() / t.best / 1e9,
            t.best * 1e3,
            t.extra_mib
                .map_or("null".to_string(), |m| format!("{m:.1}")),
            t.busy(),
        )
    });
    format!(
        "{{\"layer\":\"{}\",\"pass\":\"{}\",{timing}\"threads\":{},\"isa\":\"{}\",\"flops\":{},\"shape\":{{\"n\":{},\"c_in\":{},\"c_out\":{},\"groups\":{},\"input\":{:?},\"kernel\":{:?},\"output\":{:?},\"pad\":{:?},\"stride\":{:?},\"dilation\":{:?}}}}}",
        layer.name,
        pass,
        threads,
        rdna1shim::cpu::isa(),
        s.flops(),
        s.n,
        s.c_in,
        s.c_out,
        s.groups,
        s.input,
        s.kernel,
        s.output,
        s.pad,
        s.stride,
        s.dilation
    )
}

/// `--serve`: times one layer-pass per request line `<layer name>\t<pass>`
/// on stdin and answers with one JSON line, so that a driver can interleave
/// the engine's measurements with a peer's in the same run.
fn serve(pool: &rayon::ThreadPool, layers: &[Layer], threads: usize, args: &Args) {
    use std::io::{BufRead, Write};
    let mut cached: Option<(usize, Buffers)> = None;
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line == "peak" {
            let peak = pool.install(rdna1shim::cpu::fma_peak_gflops);
            let peak = peak.map_or("null".to_string(), |p| format!("{p:.1}"));
            let isa = rdna1shim::cpu::isa();
            let _ = writeln!(out, "{{\"peak_gflops\":{peak},\"isa\":\"{isa}\"}}");
            let _ = out.flush();
            continue;
        }
        let Some((name, pass)) = line.split_once('\t') else {
            die(&format!("bad request {line:?}"));
        };
        let Some(i) = layers.iter().position(|l| l.name == name) else {
            die(&format!("no layer named {name:?}"));
        };
        if !PASSES.contains(&pass) {
            die(&format!("unknown pass {pass}"));
        }
        if cached.as_ref().is_none_or(|(j, _)| *j != i) {
            cached = Some((i, buffers(&layers[i].shape)));
        }
        let b = &mut cached.as_mut().expect("cached above").1;
        let t = time_pass(pool, &layers[i].shape, pass, b, args);
        let _ = writeln!(out, "{}", json_line(&layers[i], pass, threads, Some(&t)));
        let _ = out.flush();
    }
}

fn main() {
    let args = parse_args();
    if let Some(cap) = args.isa {
        rdna1shim::cpu::set_max_isa(cap);
    }
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .expect("thread pool");
    if let Some(p) = &args.pass {
        if !PASSES.contains(&p.as_str()) {
            die(&format!("unknown pass {p}"));
        }
    }
    let layers: Vec<Layer> = if args.cifar { cifar() } else { yardstick() }
        .into_iter()
        .map(|l| match args.batch {
            Some(n) => with_batch(l, n),
            None => l,
        })
        .filter(|l| {
            args.layer
                .as_ref()
                .is_none_or(|f| l.name.contains(f.as_str()))
        })
        .collect();
    if layers.is_empty() {
        die("no layer matches");
    }
    let passes: Vec<&str> = PASSES
        .iter()
        .copied()
        .filter(|p| args.pass.as_ref().is_none_or(|f| f == p))
        .collect();
    if args.list {
        for layer in &layers {
            for pass in &passes {
                println!("{}", json_line(layer, pass, threads, None));
            }
        }
        return;
    }
    if args.serve {
        serve(&pool, &layers, threads, &args);
        return;
    }
    let peak = if args.json {
        None
    } else {
        pool.install(rdna1shim::cpu::fma_peak_gflops)
    };
    if !args.json {
        println!(
            "conv_bench: {threads} threads, instruction set {}, best of >= 3 runs after a warm-up; FMA peak of the threads: {}",
            rdna1shim::cpu::isa(),
            peak.map_or("unknown".to_string(), |p| format!("{p:.1} GFLOP/s"))
        );
        println!(
            "{:<38} {:>17} {:>9} {:>9} {:>6} {:>10}",
            "layer", "pass", "ms", "GFLOP/s", "%peak", "extra MiB"
        );
    }
    let mut totals = [0.0f64; 3]; // [flops, seconds, count]
    let mut busy_passes = 0;
    for layer in &layers {
        let s = &layer.shape;
        let mut b = buffers(s);
        for pass in &passes {
            let t = time_pass(&pool, s, pass, &mut b, &args);
            busy_passes += usize::from(t.busy());
            totals[0] += s.flops();
            totals[1] += t.best;
            totals[2] += 1.0;
            if args.json {
                println!("{}", json_line(layer, pass, threads, Some(&t)));
            } else {
                let gflops = s.flops() / t.best / 1e9;
                println!(
                    "{:<38} {:>17} {:>9.3} {:>9.1} {:>6} {:>10}{}",
                    layer.name,
                    pass,
                    t.best * 1e3,
                    gflops,
                    peak.map_or("-".to_string(), |p| format!("{:.0}", 100.0 * gflops / p)),
                    t.extra_mib.map_or("-".to_string(), |m| format!("{m:.1}")),
                    if t.busy() {
                        format!("  busy ({:.0}% others)", 100.0 * t.load.unwrap_or(0.0))
                    } else {
                        String::new()
                    }
                );
            }
        }
    }
    if !args.json {
        println!(
            "total: {:.1} GFLOP in {:.1} ms over {} layer-passes = {:.1} GFLOP/s; process VmHWM {} MiB; {} passes disturbed by other processes",
            totals[0] / 1e9,
            totals[1] * 1e3,
            totals[2],
            totals[0] / totals[1] / 1e9,
            proc_status_kib("VmHWM:").map_or("-".to_string(), |k| (k / 1024).to_string()),
            busy_passes
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_override_renames_and_resizes_every_layer() {
        for l in yardstick().into_iter().chain(cifar()) {
            let (name, shape) = (l.name.clone(), l.shape);
            let b = with_batch(l, 32);
            assert_eq!(b.shape, ConvShape { n: 32, ..shape }, "{name}");
            let base = name.rsplit_once(" b").expect("a batch suffix").0;
            assert_eq!(b.name, format!("{base} b32"));
        }
    }

    #[test]
    fn cifar_layers_are_resnet20s_convolutions() {
        let layers = cifar();
        assert_eq!(layers.len(), 6);
        for l in &layers {
            let s = &l.shape;
            assert_eq!(s.n, 32, "{}", l.name);
            assert_eq!(s.input[1..], [s.input[2]; 2], "{}", l.name);
            assert!([32, 16, 8].contains(&s.input[2]), "{}", l.name);
            assert_eq!(s.kernel, [1, 3, 3], "{}", l.name);
            // Same-size 3×3 layers keep their channels; strided ones double them.
            if s.stride[1] == 2 {
                assert_eq!(
                    (s.c_out, s.output[2]),
                    (2 * s.c_in, s.input[2] / 2),
                    "{}",
                    l.name
                );
            } else if s.c_in != 3 {
                assert_eq!((s.c_out, s.output[2]), (s.c_in, s.input[2]), "{}", l.name);
            }
            assert!(l.name.contains(&format!(" {} ", s.input[2])), "{}", l.name);
        }
    }
}
