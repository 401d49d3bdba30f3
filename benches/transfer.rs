//! Transfer benchmarks: block verification on the rayon pool against plain
//! single-threaded BLAKE3 over the same bytes, the wire codec, and a whole
//! backfill over QUIC on loopback.
//!
//! Run: `cargo bench --bench transfer`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use hafill_engine::backfill::{self, BackfillOptions};
use hafill_engine::config::Config;
use hafill_engine::sim::{self, RecordSpec};
use hafill_engine::store::Store;
use hafill_engine::{identity, Timestamp};
use hafill_protocol::tree::{block_cvs, VerifiedTree};
use hafill_protocol::{
    decode_coverage_chunk, encode_coverage_chunks, CoverageEntry, Encoding, Message,
};
use rayon::prelude::*;

fn data(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in v.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    v
}

fn verify(c: &mut Criterion) {
    let bytes = data(64 << 20);
    let mut g = c.benchmark_group("verify");
    g.throughput(Throughput::Bytes(bytes.len() as u64));
    g.bench_function("blake3_single_thread_64MiB", |b| {
        b.iter(|| black_box(blake3::hash(&bytes)))
    });
    for bs in [256u32 << 10, 1 << 20, 4 << 20] {
        let root = blake3::hash(&bytes);
        let tree = VerifiedTree::new(
            &root,
            bytes.len() as u64,
            bytes.len() as u64,
            bs,
            block_cvs(&bytes, bs),
        )
        .expect("tree");
        g.bench_with_input(
            BenchmarkId::new("blocks_on_rayon_64MiB", format!("{}KiB", bs >> 10)),
            &bs,
            |b, &bs| {
                b.iter(|| {
                    bytes
                        .par_chunks(bs as usize)
                        .enumerate()
                        .for_each(|(i, chunk)| {
                            black_box(
                                tree.verify_block(i as u32, chunk.to_vec())
                                    .expect("verifies"),
                            );
                        })
                })
            },
        );
    }
    g.finish();
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let block = Message::Block {
        index: 3,
        encoding: Encoding::Raw,
        raw_len: 1 << 20,
        data: data(1 << 20),
    };
    g.throughput(Throughput::Bytes(1 << 20));
    g.bench_function("block_1MiB_encode_decode", |b| {
        b.iter(|| {
            let f = block.to_frame();
            black_box(Message::decode_from(&f).expect("decodes"))
        })
    });
    let entries: Vec<CoverageEntry> = (0..10_000)
        .map(|i| CoverageEntry {
            camera: format!("cam-{:04}", i % 100),
            start_us: i as i64 * 60_000_000,
            duration_us: 60_000_000,
            len: 30_000_000,
            blake3: *blake3::hash(&(i as u64).to_le_bytes()).as_bytes(),
            notes: String::new(),
        })
        .collect();
    g.throughput(Throughput::Elements(entries.len() as u64));
    g.bench_function("coverage_10k_entries_encode_decode", |b| {
        b.iter(|| {
            let chunks = encode_coverage_chunks(&entries, 3);
            let mut n = 0;
            for m in chunks {
                if let Message::CoverageChunk { raw_len, zstd } = m {
                    n += decode_coverage_chunk(raw_len, &zstd)
                        .expect("decodes")
                        .len();
                }
            }
            black_box(n)
        })
    });
    g.finish();
}

fn loopback(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = |()| {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .map(|a| a.port())
            .expect("port")
    };
    let (p1, p2) = (port(()), port(()));
    let id1 = identity::generate(&dir.path().join("rs01"), "rs01").expect("keys");
    let id2 = identity::generate(&dir.path().join("rs02"), "rs02").expect("keys");
    for (name, port, peer, peer_port, peer_id) in [
        ("rs01", p1, "rs02", p2, &id2),
        ("rs02", p2, "rs01", p1, &id1),
    ] {
        let text = format!(
            "[server]\nname = \"{name}\"\nlisten = \"127.0.0.1:{port}\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\nstatus = \"off\"\n\
             [[peer]]\nname = \"{peer}\"\naddr = \"127.0.0.1:{peer_port}\"\nid = \"{peer_id}\"\n\
             [[camera]]\nid = \"cam-*\"\nservers = [\"rs01\", \"rs02\"]\n"
        );
        std::fs::write(dir.path().join(name).join("hafill.toml"), text).expect("config");
    }
    let to = Timestamp((Timestamp::now().0 / 60_000_000 - 2) * 60_000_000);
    let spec = RecordSpec {
        cameras: 4,
        first_camera: 1,
        bitrate_bps: 4_000_000,
        segment_us: 60_000_000,
        from: to.add_micros(-4 * 60_000_000),
        to,
        outages: vec![],
        outage_cameras: None,
        seed: 1,
    };
    let source = Store::open_writer(dir.path().join("rs01/store"), true).expect("store");
    let total = sim::record(&source, &spec, |_, _| {})
        .expect("record")
        .bytes;
    drop(source);
    let c1 = Arc::new(Config::load(&dir.path().join("rs01/hafill.toml")).expect("config"));
    let c2 = Config::load(&dir.path().join("rs02/hafill.toml")).expect("config");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = rt.spawn(hafill_engine::daemon::serve(
        c1.clone(),
        hafill_engine::daemon::ServeOptions::default(),
        std::sync::Arc::new(std::sync::RwLock::new(c1.throttle.clone())),
        async {
            let _ = stopped.await;
        },
    ));

    let mut g = c.benchmark_group("loopback");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total));
    g.bench_function("backfill_4_cameras_x_4_minutes", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iters {
                let _ = std::fs::remove_dir_all(dir.path().join("rs02/store"));
                hafill_engine::store::init_native(&dir.path().join("rs02/store"))
                    .expect("store init");
                let t = std::time::Instant::now();
                let r = rt
                    .block_on(backfill::backfill(&c2, &BackfillOptions::default(), |_| {}))
                    .expect("backfill");
                spent += t.elapsed();
                assert_eq!(r.bytes, total);
            }
            spent
        })
    });
    g.finish();
    let _ = stop.send(());
    let _ = rt.block_on(server);
}

criterion_group!(benches, verify, codec, loopback);
criterion_main!(benches);
