//! Quick end-to-end checks of the journal: rollover, seeks, restart, second writer, retention.
// The journal is not built under `--cfg loom` (only its wait protocol is, for the models).
#![cfg(not(loom))]

use shm_channel::journal::*;

fn payload(seq: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seq as usize * 31 + i) as u8).collect()
}

#[test]
fn rollover_seek_restart_retention() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::new()
        .dir(dir.path())
        .page_size(64 * 1024)
        .checksums(true)
        .retention(Retention::KeepPages(3));
    let mut writer = JournalWriter::open("smoke", &options).unwrap();
    assert!(matches!(
        JournalWriter::open("smoke", &options),
        Err(JournalError::WriterActive { .. })
    ));
    let ropts = ReaderOptions::new().dir(dir.path());
    let mut live = JournalReader::open("smoke", &ropts, ReadFrom::End).unwrap();
    for seq in 0..2000u64 {
        let len = (seq * 7 % 1500) as usize;
        assert_eq!(writer.append(3, seq * 10, &payload(seq, len)).unwrap(), seq);
    }
    assert!(writer.current_page() > 5, "page {}", writer.current_page());
    for seq in 0..2000u64 {
        let frame = live.front().unwrap();
        assert_eq!(frame.seq(), seq);
        assert_eq!(frame.time(), seq * 10);
        assert_eq!(
            frame.payload(),
            &payload(seq, (seq * 7 % 1500) as usize)[..]
        );
        live.pop().unwrap();
    }
    assert!(matches!(live.front(), Err(ReadError::Empty)));
    for target in [0u64, 1, 17, 999, 1500, 1999] {
        let mut r = JournalReader::open("smoke", &ropts, ReadFrom::Seq(target)).unwrap();
        assert_eq!(r.front().unwrap().seq(), target);
        let mut r = JournalReader::open(
            "smoke",
            &ropts,
            ReadFrom::Time(target * 10 - target.min(1) * 5),
        )
        .unwrap();
        assert_eq!(r.front().unwrap().seq(), target);
    }
    let mut slow = JournalReader::open("smoke", &ropts, ReadFrom::Oldest).unwrap();
    slow.pop().unwrap();
    drop(writer);
    let mut writer = JournalWriter::open("smoke", &options).unwrap();
    assert_eq!(writer.next_seq(), 2000);
    for seq in 2000..4000u64 {
        writer
            .append(3, seq * 10, &payload(seq, (seq * 7 % 1500) as usize))
            .unwrap();
        if seq % 100 == 0 {
            writer.maintain(seq * 10).unwrap();
        }
    }
    writer.maintain(40_000).unwrap();
    assert!(writer.stats().pages_removed > 0);
    // The slow reader reads its mapped page to the end, then lags.
    let mut lagged = None;
    for _ in 0..5000 {
        match slow.front() {
            Ok(_) => slow.pop().unwrap(),
            Err(ReadError::Lagged {
                missed, resume_at, ..
            }) => {
                lagged = Some((missed, resume_at));
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    let (missed, resume_at) = lagged.expect("lagged");
    assert!(missed > 0);
    assert_eq!(slow.front().unwrap().seq(), resume_at);
    assert!(matches!(
        JournalReader::open("smoke", &ropts, ReadFrom::Seq(0)),
        Err(JournalError::Removed { .. })
    ));
}

#[test]
fn a_blocked_reader_is_woken_and_a_reader_that_never_sleeps_costs_no_wake() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::new().dir(dir.path()).page_size(64 * 1024);
    let mut writer = JournalWriter::open("wake", &options).unwrap();
    let ropts = ReaderOptions::new().dir(dir.path());
    let mut reader = JournalReader::open("wake", &ropts, ReadFrom::End).unwrap();
    let woken = std::thread::spawn(move || {
        let mut seen = 0u64;
        while seen < 3000 {
            assert!(reader
                .wait(
                    shm_channel::WaitStrategy::Block { spin_first: 10 },
                    Some(std::time::Duration::from_secs(20))
                )
                .unwrap());
            assert_eq!(reader.front().unwrap().seq(), seen);
            reader.pop().unwrap();
            seen += 1;
        }
    });
    for seq in 0..3000u64 {
        writer.append(1, seq, &[7u8; 64]).unwrap();
        if seq % 100 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            writer.maintain(seq).unwrap();
        }
    }
    woken.join().unwrap();
    assert!(writer.stats().wakes > 0, "{:?}", writer.stats());
    assert!(writer.current_page() > 0);
}

#[test]
fn a_named_reader_whose_position_was_removed_while_away_resumes_at_the_oldest_with_a_lag() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::new()
        .dir(dir.path())
        .page_size(64 * 1024)
        .retention(Retention::KeepPages(2));
    let mut writer = JournalWriter::open("away", &options).unwrap();
    let position = dir.path().join("reader.pos");
    let ropts = ReaderOptions::new()
        .dir(dir.path())
        .position_file(&position);
    let mut reader = JournalReader::open("away", &ropts, ReadFrom::Oldest).unwrap();
    for seq in 0..10u64 {
        writer.append(1, seq, &payload(seq, 100)).unwrap();
    }
    for _ in 0..4 {
        reader.pop().unwrap();
    }
    drop(reader);
    let mut seq = 10;
    while writer.current_page() < 5 {
        writer.append(1, seq, &payload(seq, 100)).unwrap();
        seq += 1;
        writer.maintain(seq).unwrap();
    }
    let oldest = JournalReader::open(
        "away",
        &ReaderOptions::new().dir(dir.path()),
        ReadFrom::Oldest,
    )
    .unwrap()
    .next_seq();
    assert!(oldest > 4);
    let mut reader = JournalReader::open("away", &ropts, ReadFrom::End).unwrap();
    match reader.front() {
        Err(ReadError::Lagged {
            missed, resume_at, ..
        }) => {
            assert_eq!((missed, resume_at), (oldest - 4, oldest));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(reader.front().unwrap().seq(), oldest);
    reader.pop().unwrap();
    drop(reader);
    // The position followed: a third opening resumes after that pop, with no lag.
    let mut reader = JournalReader::open("away", &ropts, ReadFrom::Oldest).unwrap();
    assert_eq!(reader.front().unwrap().seq(), oldest + 1);
}

/// Child role: a reader that blocks on the journal until killed.
#[test]
#[ignore = "a child role of a_blocking_reader_killed_armed_is_disarmed_by_the_writers_sweep"]
fn role_blocking_reader() {
    let dir = std::env::var("JOURNAL_SMOKE_DIR").expect("a child role");
    let ropts = ReaderOptions::new().dir(dir);
    let mut reader = JournalReader::open("swept", &ropts, ReadFrom::End).unwrap();
    loop {
        let _ = reader.wait(
            shm_channel::WaitStrategy::Block { spin_first: 0 },
            Some(std::time::Duration::from_secs(1)),
        );
    }
}

#[test]
fn a_blocking_reader_killed_armed_is_disarmed_by_the_writers_sweep() {
    let dir = tempfile::tempdir().unwrap();
    let options = JournalOptions::new().dir(dir.path()).page_size(64 * 1024);
    let mut writer = JournalWriter::open("swept", &options).unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "role_blocking_reader",
            "--ignored",
            "--test-threads=1",
        ])
        .env("JOURNAL_SMOKE_DIR", dir.path())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while writer.wake_stats().armed == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the child never blocked"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // Still counted: the writer fences for a reader that is gone...
    assert_eq!(writer.wake_stats().armed, 1);
    writer.append(1, 1, b"x").unwrap();
    // ...until its sweep (once a second by `now`) takes the arm back.
    writer.maintain(2_000_000_000).unwrap();
    assert_eq!(writer.stats().dead_readers_disarmed, 1);
    assert_eq!(writer.wake_stats().armed, 0);
    // A live blocking reader is left alone.
    let mut reader = JournalReader::open(
        "swept",
        &ReaderOptions::new().dir(dir.path()),
        ReadFrom::End,
    )
    .unwrap();
    assert!(!reader
        .wait(
            shm_channel::WaitStrategy::Block { spin_first: 0 },
            Some(std::time::Duration::from_millis(20))
        )
        .unwrap());
    assert_eq!(writer.wake_stats().armed, 1);
    writer.maintain(4_000_000_000).unwrap();
    assert_eq!(writer.wake_stats().armed, 1);
    assert_eq!(writer.stats().dead_readers_disarmed, 1);
    drop(reader);
    assert_eq!(writer.wake_stats().armed, 0);
}

#[test]
fn a_reader_before_any_page_and_a_failed_page_switch_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    let ropts = ReaderOptions::new().dir(dir.path());
    assert!(matches!(
        JournalReader::open("empty", &ropts, ReadFrom::Oldest),
        Err(JournalError::NoPages { .. })
    ));
    let options = JournalOptions::new()
        .dir(dir.path())
        .page_size(64 * 1024)
        .prepare_next(PrepareNext::Manual);
    let mut writer = JournalWriter::open("gone", &options).unwrap();
    // The folder vanishes under the writer: the switch cannot make the next page.
    std::fs::remove_dir_all(dir.path().join("gone")).unwrap();
    let mut seq = 0;
    let error = loop {
        match writer.append(1, seq, &[1u8; 1000]) {
            Ok(_) => seq += 1,
            Err(error) => break error,
        }
    };
    assert!(
        matches!(error, AppendError::Page(JournalError::Io { .. })),
        "{error}"
    );
    assert!(error.to_string().contains("switching pages"), "{error}");
    // Nothing was published by the failed append: the next one would get the same number.
    assert_eq!(writer.next_seq(), seq);
}
