//! A small WASI command to try `roam run` with.
//!
//! Build and run:
//!
//! ```text
//! cargo build --release --target wasm32-wasip1 -p hello
//! cargo run --release -p roam -- run target/wasm32-wasip1/release/hello.wasm -- Ada Grace
//! ```
//!
//! It greets each argument, shows that the environment is empty unless
//! granted (`--env NAME=value`), and reports how much memory it may use.

fn main() {
    // 1. Arguments arrive as they would for a native program.
    let names: Vec<String> = std::env::args().skip(1).collect();
    if names.is_empty() {
        println!("Hello from Roam! (pass names after `--` to be greeted)");
    }
    for name in &names {
        println!("Hello, {name}, from a WebAssembly sandbox!");
    }

    // 2. Nothing is granted by default: no environment, no files.
    let vars = std::env::vars().count();
    println!("environment variables granted: {vars}");
    let can_read_root = std::fs::read_dir("/").is_ok();
    println!("can read the host's filesystem: {can_read_root}");

    // 3. Memory grows on demand up to the host's cap (`--max-memory`).
    let mut total = 0usize;
    let mut blocks = Vec::new();
    for _ in 0..16 {
        blocks.push(vec![1u8; 1 << 20]);
        total += 1;
    }
    println!("allocated {total} MiB in {} blocks", blocks.len());
}
