//! Arbitrary bytes as a token shard: opening it, checking its tokens and
//! reading windows of it give tokens or one error, never a panic.

#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use runner::data::shards::Shard;

fuzz_target!(|data: &[u8]| {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    let path = PATH.get_or_init(|| {
        let name = format!("runner-fuzz-shard-{}.bin", std::process::id());
        std::env::temp_dir().join(name)
    });
    std::fs::write(path, data).expect("the temporary folder is writable");
    let Ok(mut shard) = Shard::open(path) else {
        return;
    };
    let _ = shard.tokenizer();
    let mut window = [0u32; 5];
    // Windows at the start, at the end, and past it.
    for start in [0, shard.len.saturating_sub(3), shard.len, usize::MAX - 2] {
        let _ = shard.read(start, &mut window);
    }
    if shard.check_tokens(256, 0).is_ok() {
        let mut all = vec![0u32; shard.len.min(1 << 16)];
        let _ = shard.read_checked(&mut all, 256);
    }
});
