//! rdna1shim-probe: the child program `rdna1shim probe` (`scripts/probe.py` in a
//! checkout) runs once per recorded convolution configuration (see `rdna1shim::probe`);
//! `pip install` puts it inside the Python package, next to `librdna1shim.so`.

fn main() {
    std::process::exit(rdna1shim::probe::main(std::env::args().skip(1)));
}
