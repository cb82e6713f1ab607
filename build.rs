//! Empty on purpose: it exists so that `[build-dependencies]` in Cargo.toml
//! can fix syn's features (see the comment there), keeping `--features mpi`
//! from rebuilding every proc macro and the crates above them.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
}
