//! Opens both ends of a channel in one process, sends a message each way and reads it back.
//!
//! `cargo run -p shm-channel --example hello` (uses a temporary folder; pass a folder such as
//! `/dev/shm` as the first argument to use that instead).

use shm_channel::prelude::*;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[bytemuck(crate = "shm_channel::bytemuck")] // no bytemuck dependency of our own needed
struct Ping {
    seq: u64,
    sent_at: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let temp = tempfile::tempdir()?;
    let dir = std::env::args_os()
        .nth(1)
        .map_or_else(|| temp.path().to_path_buf(), Into::into);
    let options = ChannelOptions::new().dir(&dir);
    let name = format!("hello-{}", std::process::id());

    let mut a = Channel::<4096>::create_or_open(&name, End::A, &options)?;
    let mut b = Channel::<4096>::create_or_open(&name, End::B, &options)?;
    println!(
        "segment {name} in {}: {} bytes, A created it: {}",
        dir.display(),
        Channel::<4096>::SEGMENT_SIZE,
        a.created()
    );

    // Every error of the message API implements std::error::Error, so `?` works throughout.
    a.sender().send(1, b"hello from A")?;
    let text = b
        .receiver()
        .recv_with(|m| String::from_utf8_lossy(m.payload()).into_owned())?;
    println!("B received: {text}");

    b.sender().send_pod(
        2,
        &Ping {
            seq: 1,
            sent_at: 42,
        },
    )?;
    let (tag, ping) = a.receiver().recv_pod::<Ping>()?;
    println!("A received tag {tag}: {ping:?}");

    let stats = a.stats(shm_channel::Direction::AToB);
    println!(
        "A→B: {} message(s), {} byte(s)",
        stats.received_messages, stats.received_bytes
    );

    a.unlink()?;
    Ok(())
}
