//! rdna1shim-probe: the child program `scripts/probe.py` runs once per recorded
//! convolution configuration (see `rdna1shim::probe`).

fn main() {
    std::process::exit(rdna1shim::probe::main(std::env::args().skip(1)));
}
