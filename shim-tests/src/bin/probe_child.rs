//! The probe's child program built with the tests, so that they always run the current
//! `rdna1shim::probe` (the same one-line `main` as the shipped `rdna1shim-probe`).

fn main() {
    std::process::exit(rdna1shim::probe::main(std::env::args().skip(1)));
}
