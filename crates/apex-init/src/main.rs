//! apex-init binary; see the library docs.

fn main() {
    apex_init::main()
}
