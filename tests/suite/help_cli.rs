//! What an operator reads and types: durations and sizes as people write
//! them.

use crate::common::images::{Change, Fill};
use crate::common::{
    assert_clean_failure, assert_usage_errors, json, run, s, scratch, script, stderr,
};

const MIB: usize = 1 << 20;

#[test]
fn durations_take_units_and_sizes_take_fractions() {
    let c = Change::new(scratch("help-units"), MIB, 4096, 5, [(3, Fill::Random)]);
    // A far end that says nothing: --timeout 1s gives up after a second.
    let silent = script(&c.path("silent"), "exec sleep 30");
    let started = std::time::Instant::now();
    let out = run(&[
        "sync",
        "-e",
        s(&silent),
        "--timeout",
        "1s",
        "--cow",
        s(&c.cow_path),
        "--data-source",
        s(&c.new_path),
        "host:/x",
    ]);
    assert_clean_failure(&out, "no handshake within 1 s");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Minutes and hours are taken (a far end that fails at once).
    let fails = script(&c.path("fails"), "exit 255");
    for timeout in ["5m", "1h", "90"] {
        let out = run(&[
            "sync",
            "-e",
            s(&fails),
            "--timeout",
            timeout,
            "--progress-every",
            "2m",
            "--cow",
            s(&c.cow_path),
            "--data-source",
            s(&c.new_path),
            "host:/x",
        ]);
        assert_eq!(out.status.code(), Some(6), "{timeout}: {}", stderr(&out));
    }
    let (cow, new) = (s(&c.cow_path), s(&c.new_path));
    assert_usage_errors(&[
        (
            &[
                "sync",
                "--timeout",
                "0",
                "--cow",
                cow,
                "--data-source",
                new,
                "h:/x",
            ],
            "at least one second",
        ),
        (
            &[
                "sync",
                "--timeout",
                "5x",
                "--cow",
                cow,
                "--data-source",
                new,
                "h:/x",
            ],
            "unknown unit",
        ),
        (
            &[
                "sync",
                "--timeout",
                "1.5m",
                "--cow",
                cow,
                "--data-source",
                new,
                "h:/x",
            ],
            "not a duration",
        ),
        (
            &["apply", "--progress-every", "0s", cow, new],
            "at least one second",
        ),
        (
            &["list", "--cow", cow, "--origin-size", "1.1k"],
            "not a whole number of bytes",
        ),
        (
            &["list", "--cow", cow, "--origin-size", "1,5G"],
            "not a size in bytes",
        ),
        (
            &["verify", "--block-size", "1.5M", new, new],
            "not a power of two",
        ),
    ]);
    // 0.5M is 524288 bytes, written as a fraction.
    let listing = json(&run(&[
        "list",
        "--json",
        "--cow",
        cow,
        "--origin-size",
        "0.5M",
    ]));
    assert_eq!(listing["origin_size"], 512 * 1024);
    let listing = json(&run(&[
        "list",
        "--json",
        "--cow",
        cow,
        "--origin-size",
        "1.0M",
    ]));
    assert_eq!(listing["origin_size"], MIB as u64);
    let verified = json(&run(&[
        "verify",
        "--json",
        "--block-size",
        "0.5M",
        new,
        new,
    ]));
    assert_eq!(verified["block_size"], 512 * 1024);
}
