//! The kill -9 campaign: the driver SIGKILLed at a random moment of each round while the
//! clients cycle volumes, restarted at once; the invariants checked after every restart.

use std::time::{Duration, Instant};

use iolane_tests::{is_lvm, note, require_root};

use super::{Rng, check, env_u64, finish, report, seed, spawn_clients, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_campaign_loses_and_leaks_nothing() {
    require_root!();
    let seed = seed();
    let kills = env_u64("IOLANE_CAMPAIGN_KILLS", 100);
    // How long the clients run before the kill, at most: LVM calls take about a second in
    // the emulated VM, loop calls milliseconds.
    let round_ms = env_u64(
        "IOLANE_CAMPAIGN_ROUND_MS",
        if is_lvm() { 1500 } else { 600 },
    );
    note(format!(
        "campaign kill9: seed {seed} (IOLANE_CAMPAIGN_SEED={seed} replays it), {kills} kills, rounds up to {round_ms} ms"
    ));
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let (mut d, shared, _cg) = start(0).await;
    let baseline = if is_lvm() {
        Some(
            check::available(&mut d)
                .await
                .expect("GetCapacity of the empty pool"),
        )
    } else {
        None
    };
    let clients = spawn_clients(&shared, &mut rng);
    let mut children_killed = 0u64;
    for round in 0..kills {
        tokio::time::sleep(Duration::from_millis(rng.range(0, round_ms))).await;
        // Every other kill, on average, takes the driver's children with it, as the end
        // of a container's PID namespace does; the others leave them running, as a
        // process outside a container leaves its orphans.
        let with_children = rng.range(0, 1) == 1;
        let children = d.pid().map(children_of).unwrap_or_default();
        d.kill();
        if with_children {
            for pid in children {
                let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid fits i32"));
                // Gone already is fine.
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            }
            children_killed += 1;
        }
        d.restart().await;
        if !shared
            .checkpoint(
                &mut d,
                baseline,
                &format!("round {round}"),
                " after the restart",
            )
            .await
        {
            break;
        }
    }
    finish(&mut d, &shared, clients, baseline).await;
    report(
        "kill9",
        seed,
        &format!("kills={kills} (with_children={children_killed})"),
        &shared,
        started,
    );
}

/// The processes whose parent is `pid` (from `/proc/<pid>/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let child: u32 = e.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: comm may hold spaces, so split after its `)`.
            let ppid: u32 = stat
                .rsplit_once(')')?
                .1
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            (ppid == pid).then_some(child)
        })
        .collect()
}
