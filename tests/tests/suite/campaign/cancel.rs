//! The cancellation campaign: two calls in three get a random client-side deadline, so
//! clients give up on calls at every point of their work and retry them; the driver must
//! finish or undo what a given-up call started (no leaked reservation, no half-made
//! volume, no call running twice). The invariants are checked after every round.

use std::time::{Duration, Instant};

use iolane_tests::{is_lvm, note, require_root};

use super::{Rng, check, env_u64, finish, report, seed, spawn_clients, start};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_campaign_leaves_every_call_finished_or_undone() {
    require_root!();
    let seed = seed();
    let rounds = env_u64(
        "IOLANE_CAMPAIGN_CANCEL_ROUNDS",
        if is_lvm() { 10 } else { 20 },
    );
    // Deadlines up to this many ms: around the time a call takes.
    let max_ms = env_u64(
        "IOLANE_CAMPAIGN_CANCEL_MS",
        if is_lvm() { 2000 } else { 150 },
    );
    let round_ms = env_u64(
        "IOLANE_CAMPAIGN_ROUND_MS",
        if is_lvm() { 3000 } else { 600 },
    );
    note(format!(
        "campaign cancel: seed {seed} (IOLANE_CAMPAIGN_SEED={seed} replays it), {rounds} rounds of up to {round_ms} ms, deadlines up to {max_ms} ms"
    ));
    let started = Instant::now();
    let mut rng = Rng::new(seed);
    let (mut d, shared, _cg) = start(max_ms).await;
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
    for round in 0..rounds {
        tokio::time::sleep(Duration::from_millis(rng.range(round_ms / 2, round_ms))).await;
        if !shared
            .checkpoint(&mut d, baseline, &format!("round {round}"), "")
            .await
        {
            break;
        }
    }
    finish(&mut d, &shared, clients, baseline).await;
    report(
        "cancel",
        seed,
        &format!("rounds={rounds}"),
        &shared,
        started,
    );
}
