//! What the network path costs before hafill does any work of its own: CPU
//! seconds per GB of a QUIC transfer on loopback, memory to memory, with
//! hafill's transport (TLS 1.3 with pinned peer IDs, its cipher order,
//! MTU, windows and congestion controller; quinn's GSO and GRO). The
//! serving end sends one shared 1 MiB block (the default block size)
//! again and again without copying it, as `hafill serve` sends a block it
//! has read; no disk, no kept lists, no placeholders. Both ends run in this one process, so the
//! CPU figure is both ends together, as `benches/cost.sh` reports it.
//!
//! Three receivers, each in its own runs:
//! - `drop`: reads QUIC's chunks and drops them;
//! - `copy`: appends them into a block buffer, as hafill's receiver does;
//! - `copy+blake3`: and hashes each whole block with BLAKE3.
//!
//! Run: `cargo bench --bench floor` (`GB` per run, default 2; `ROUNDS`,
//! default 3; `CONNECTIONS` and `STREAMS` per connection, default 2 and 4
//! like `hafill backfill`). Prints each run and the medians.

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use hafill_engine::config::Config;
use hafill_engine::{identity, transfer};

/// `hafill backfill`'s default block size.
const BLOCK: usize = 1 << 20;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// User plus system CPU seconds of this process so far, from
/// `/proc/self/stat` (in clock ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The fields after the command name, which ends at the last ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

#[derive(Clone, Copy, PartialEq)]
enum Receiver {
    Drop,
    Copy,
    CopyHash,
}

impl Receiver {
    fn name(self) -> &'static str {
        match self {
            Receiver::Drop => "drop",
            Receiver::Copy => "copy",
            Receiver::CopyHash => "copy+blake3",
        }
    }
}

struct Ends {
    server: quinn::Endpoint,
    client: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    addr: SocketAddr,
}

fn ends(dir: &std::path::Path) -> Ends {
    let a = dir.join("a");
    let b = dir.join("b");
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    identity::generate(&a, "a").unwrap();
    identity::generate(&b, "b").unwrap();
    let me = identity::load(&a.join("cert.pem"), &a.join("key.pem")).unwrap();
    let them = identity::load(&b.join("cert.pem"), &b.join("key.pem")).unwrap();
    let text = format!(
        "[server]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nstore = \"store\"\nkey = \"key.pem\"\ncert = \"cert.pem\"\n\n\
         [[peer]]\nname = \"b\"\naddr = \"127.0.0.1:9\"\nid = \"{}\"\n\n\
         [[camera]]\nid = \"cam-*\"\nservers = [\"a\", \"b\"]\n",
        them.id
    );
    let config = Config::parse(&text, &a.join("hafill.toml")).unwrap();
    let (server, _) = transfer::server_endpoint(&config, &me).unwrap();
    let addr = server.local_addr().unwrap();
    let client = transfer::client_endpoint(addr).unwrap();
    let client_config = transfer::client_config(&them, "a", &me.id).unwrap();
    Ends {
        server,
        client,
        client_config,
        addr,
    }
}

/// The serving end: every stream asks for a byte count (8 bytes, LE) and
/// gets that many bytes of the shared block.
async fn serve(ep: quinn::Endpoint, block: Bytes) {
    while let Some(incoming) = ep.accept().await {
        let block = block.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let block = block.clone();
                tokio::spawn(async move {
                    let mut ask = [0u8; 8];
                    if recv.read_exact(&mut ask).await.is_err() {
                        return;
                    }
                    let mut left = u64::from_le_bytes(ask) as usize;
                    while left > 0 {
                        let n = left.min(block.len());
                        if send.write_chunk(block.slice(..n)).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

async fn receive(conn: quinn::Connection, bytes: u64, how: Receiver) -> u64 {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&bytes.to_le_bytes()).await.unwrap();
    let _ = send.finish();
    let mut got = 0u64;
    let mut block = Vec::with_capacity(BLOCK);
    let mut digest = 0u8;
    while let Some(chunk) = recv.read_chunk(BLOCK - block.len(), true).await.unwrap() {
        got += chunk.bytes.len() as u64;
        if how == Receiver::Drop {
            continue;
        }
        block.extend_from_slice(&chunk.bytes);
        if block.len() == BLOCK {
            if how == Receiver::CopyHash {
                digest ^= blake3::hash(&block).as_bytes()[0];
            }
            block.clear();
        }
    }
    std::hint::black_box(digest);
    got
}

/// One run: returns (bytes, seconds, CPU seconds).
async fn run(ends: &Ends, how: Receiver, total: u64, conns: u64, streams: u64) -> (u64, f64, f64) {
    let mut cs = Vec::new();
    for _ in 0..conns {
        let c = ends
            .client
            .connect_with(ends.client_config.clone(), ends.addr, "a")
            .unwrap()
            .await
            .unwrap();
        cs.push(c);
    }
    let per = total / (conns * streams) / BLOCK as u64 * BLOCK as u64;
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in &cs {
        for _ in 0..streams {
            tasks.push(tokio::spawn(receive(c.clone(), per, how)));
        }
    }
    let mut got = 0;
    for t in tasks {
        got += t.await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    for c in cs {
        c.close(0u32.into(), b"done");
    }
    // The next run starts once this one's closes are sent.
    ends.client.wait_idle().await;
    (got, secs, cpu)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter word picks receivers.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let total = env("GB", 2) * 1_000_000_000;
    let rounds = env("ROUNDS", 3).max(1);
    let conns = env("CONNECTIONS", 2).max(1);
    let streams = env("STREAMS", 4).max(1);
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let hows = [Receiver::Drop, Receiver::Copy, Receiver::CopyHash];
    let hows: Vec<Receiver> = hows
        .into_iter()
        .filter(|h| filter.is_empty() || filter.iter().any(|f| h.name().contains(f.as_str())))
        .collect();
    println!(
        "QUIC on loopback, memory to memory, hafill's transport: {} connections x {} streams, {:.1} GB per run, {} rounds, {} cores",
        conns,
        streams,
        total as f64 / 1e9,
        rounds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    rt.block_on(async {
        let ends = ends(dir.path());
        let block = Bytes::from(
            (0..BLOCK)
                .map(|i| (i * 7 + i / 4096) as u8)
                .collect::<Vec<u8>>(),
        );
        tokio::spawn(serve(ends.server.clone(), block));
        let mut results: Vec<(Receiver, Vec<(f64, f64)>)> =
            hows.iter().map(|h| (*h, Vec::new())).collect();
        for _ in 0..rounds {
            for (how, rs) in results.iter_mut() {
                let (bytes, secs, cpu) = run(&ends, *how, total, conns, streams).await;
                let gb = bytes as f64 / 1e9;
                println!(
                    "{:<12} {:.2} GB in {:.2} s, {:6.1} MiB/s | CPU per GB, both ends: {:.2} s",
                    how.name(),
                    gb,
                    secs,
                    bytes as f64 / secs / 1048576.0,
                    cpu / gb
                );
                rs.push((bytes as f64 / secs / 1048576.0, cpu / gb));
            }
        }
        for (how, rs) in results {
            println!(
                "median {:<12} {:6.1} MiB/s | CPU per GB, both ends: {:.2} s",
                how.name(),
                median(rs.iter().map(|r| r.0).collect()),
                median(rs.iter().map(|r| r.1).collect())
            );
        }
    });
}
