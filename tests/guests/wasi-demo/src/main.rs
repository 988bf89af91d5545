//! A Rust WASI command for `roam run` tests: `wasi-demo COMMAND [ARGS]`.
//!
//! - `copy IN OUT`: upper-case file IN into OUT, print byte and line counts
//! - `exit N`: exit with status N
//! - `env K`: print the value of environment variable K
//! - `panic`: panic (a trap)
//! - `spin`: loop forever
//! - `sleep MS`: sleep
//! - `alloc MIB`: allocate and touch MIB mebibytes
//! - `ls DIR`: list a directory

use std::io::Write;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cmd = args.get(1).map(String::as_str).unwrap_or("");
    match cmd {
        "copy" => {
            let input = std::fs::read_to_string(&args[2]).expect("read input");
            let lines = input.lines().count();
            std::fs::write(&args[3], input.to_uppercase()).expect("write output");
            println!("copied {} bytes, {lines} lines", input.len());
        }
        "exit" => std::process::exit(args[2].parse().expect("status")),
        "env" => println!("{}", std::env::var(&args[2]).unwrap_or_else(|_| "<unset>".into())),
        "panic" => panic!("deliberate panic"),
        "spin" => {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(3));
            }
        }
        "sleep" => std::thread::sleep(std::time::Duration::from_millis(args[2].parse().expect("ms"))),
        "alloc" => {
            let mib: usize = args[2].parse().expect("mib");
            let mut v = vec![0u8; mib << 20];
            for i in (0..v.len()).step_by(4096) {
                v[i] = 1;
            }
            println!("allocated {mib} MiB");
        }
        "ls" => {
            let mut names: Vec<_> = std::fs::read_dir(&args[2])
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            println!("{}", names.join(" "));
        }
        _ => {
            eprintln!("usage: wasi-demo copy|exit|env|panic|spin|sleep|alloc|ls ...");
            std::io::stderr().flush().ok();
            std::process::exit(2);
        }
    }
}
