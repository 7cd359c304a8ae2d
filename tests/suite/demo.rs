//! The README's first command, `bash examples/demo.sh`: a backup copy
//! brought up to date from a COW table a real kernel wrote, with files for
//! the origin. It must keep working, say so in a few lines, and the images
//! it makes must be what it says they are.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// The copied-out chunks of a persistent COW store: (origin chunk, COW
/// chunk) for every entry of every metadata area, and the chunk size.
fn exceptions(cow: &[u8]) -> (Vec<(u64, u64)>, u64) {
    let word = |at: usize| u64::from_le_bytes(cow[at..at + 8].try_into().unwrap());
    let chunk = u32::from_le_bytes(cow[12..16].try_into().unwrap()) as u64 * 512;
    let per_area = chunk / 16;
    let mut out = Vec::new();
    for area in 0.. {
        let start = ((1 + area * (per_area + 1)) * chunk) as usize;
        let entries = (0..per_area as usize)
            .map(|i| (word(start + 16 * i), word(start + 16 * i + 8)))
            .take_while(|&(_, new)| new != 0);
        let before = out.len();
        out.extend(entries);
        if out.len() - before < per_area as usize {
            break;
        }
    }
    (out, chunk)
}

#[test]
fn the_readmes_first_command_brings_a_copy_to_identical() {
    let dir = scratch("demo");
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("bash")
        .arg(repo.join("examples/demo.sh"))
        .arg(&*dir)
        .output()
        .expect("run bash");
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "demo.sh: {}\n{text}{}",
        out.status,
        stderr(&out)
    );
    assert!(text.lines().count() <= 10, "not a few lines:\n{text}");
    let verify = text
        .lines()
        .find(|l| l.starts_with("verify "))
        .unwrap_or_else(|| panic!("no verify line:\n{text}"));
    assert!(verify.contains(": identical: "), "{verify}");

    let read = |name: &str| fs::read(dir.join(name)).unwrap();
    let (before, after, copy) = (read("before.img"), read("after.img"), read("copy.img"));
    assert_same_bytes(&copy, &after, "the copy after the demo's apply");
    assert_ne!(before, after, "the demo's writes changed nothing");

    // before.img is the origin the kernel saw: every chunk it copied into
    // the COW holds before.img's bytes at that chunk.
    let cow = read("cow.img");
    let (table, chunk) = exceptions(&cow);
    assert_eq!(table.len(), 8, "the dashes fixture's table");
    for (old, new) in table {
        let (o, n, c) = (old as usize, new as usize, chunk as usize);
        assert_same_bytes(
            &cow[n * c..(n + 1) * c],
            &before[o * c..(o + 1) * c],
            &format!("origin chunk {old} as the kernel copied it"),
        );
    }
    // after.img differs from it in exactly the chunks the table lists.
    let expected: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(repo.join("dm-fixtures/dashes/expected.json")).unwrap(),
    )
    .unwrap();
    let listed: Vec<u64> = expected["extents"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| {
            let (off, len) = (e["offset"].as_u64().unwrap(), e["length"].as_u64().unwrap());
            (off / chunk..(off + len) / chunk).collect::<Vec<_>>()
        })
        .collect();
    let differ: Vec<u64> = before
        .chunks(chunk as usize)
        .zip(after.chunks(chunk as usize))
        .enumerate()
        .filter(|(_, (b, a))| b != a)
        .map(|(i, _)| i as u64)
        .collect();
    assert_eq!(differ, listed, "chunks where after.img differs");

    // The size it reports is the delta's.
    let delta = fs::metadata(dir.join("delta.lvd")).unwrap().len();
    assert!(
        text.contains(&format!("delta.lvd is {delta} bytes")),
        "{text}"
    );
    assert!(delta < after.len() as u64 / 100, "a delta of {delta} bytes");
}
