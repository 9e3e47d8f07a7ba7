//! Properties of weighted rendezvous selection over many Call-IDs: minimal disruption when the
//! pool changes, and shares proportional to weights.

use std::net::SocketAddr;
use std::time::Instant;

use sipedge::balance::{BackendId, BackendSpec, Blacklist, Pool, Transport};

const CALLS: u32 = 20_000;

fn spec(i: u8, weight: u32) -> BackendSpec {
    BackendSpec {
        id: None,
        uri: format!("sip:192.0.2.{i}:5060"),
        addr: SocketAddr::from(([192, 0, 2, i], 5060)),
        transport: Transport::Udp,
        weight,
        priority: 0,
        drain: false,
    }
}

fn call_id(i: u32) -> String {
    format!("{i:08x}-3c2b7a@ua.example.org")
}

fn owners(pool: &Pool) -> Vec<BackendId> {
    let bl = Blacklist::default();
    let now = Instant::now();
    (0..CALLS)
        .map(|i| {
            pool.select(call_id(i).as_bytes(), now, &bl)
                .map(|b| b.id())
                .unwrap_or(BackendId(0))
        })
        .collect()
}

#[test]
fn adding_one_backend_moves_about_one_in_n_calls_and_only_to_it() {
    for n in [2u8, 3, 5, 8] {
        let before: Vec<BackendSpec> = (1..=n).map(|i| spec(i, 1)).collect();
        let mut after_specs = before.clone();
        let added = spec(n + 1, 1);
        after_specs.push(added.clone());
        let old = owners(&Pool::new(&before).unwrap());
        let new = owners(&Pool::new(&after_specs).unwrap());
        let mut moved = 0u32;
        for (o, m) in old.iter().zip(&new) {
            if o != m {
                moved += 1;
                // A call that moves can only move to the new member.
                assert_eq!(
                    *m,
                    added.backend_id(),
                    "n={n}: call moved between old members"
                );
            }
        }
        let fraction = f64::from(moved) / f64::from(CALLS);
        let ideal = 1.0 / f64::from(n + 1);
        assert!(
            (fraction - ideal).abs() < 0.02,
            "n={n}: moved {fraction:.4}, ideal {ideal:.4}"
        );
    }
}

#[test]
fn removing_one_backend_moves_only_its_calls() {
    let specs: Vec<BackendSpec> = (1..=5).map(|i| spec(i, 1)).collect();
    let removed = specs[2].backend_id();
    let rest: Vec<BackendSpec> = specs
        .iter()
        .filter(|s| s.backend_id() != removed)
        .cloned()
        .collect();
    let old = owners(&Pool::new(&specs).unwrap());
    let new = owners(&Pool::new(&rest).unwrap());
    let mut moved = 0u32;
    for (o, m) in old.iter().zip(&new) {
        if o != m {
            assert_eq!(*o, removed, "a call not owned by the removed member moved");
            moved += 1;
        }
    }
    let fraction = f64::from(moved) / f64::from(CALLS);
    assert!((fraction - 0.2).abs() < 0.02, "moved {fraction:.4}");
}

#[test]
fn shares_follow_weights() {
    let weights = [1u32, 2, 3, 4];
    let specs: Vec<BackendSpec> = (1..=4u8).zip(weights).map(|(i, w)| spec(i, w)).collect();
    let owner = owners(&Pool::new(&specs).unwrap());
    let total: u32 = weights.iter().sum();
    for (s, w) in specs.iter().zip(weights) {
        let got = owner.iter().filter(|&&o| o == s.backend_id()).count() as f64 / f64::from(CALLS);
        let want = f64::from(w) / f64::from(total);
        assert!(
            (got - want).abs() < 0.02,
            "weight {w}: share {got:.4}, expected {want:.4}"
        );
    }
}

#[test]
fn changing_one_weight_moves_calls_only_to_or_from_that_member() {
    let specs: Vec<BackendSpec> = (1..=4).map(|i| spec(i, 1)).collect();
    let mut heavier = specs.clone();
    heavier[0].weight = 3;
    let grown = heavier[0].backend_id();
    let old = owners(&Pool::new(&specs).unwrap());
    let new = owners(&Pool::new(&heavier).unwrap());
    for (o, m) in old.iter().zip(&new) {
        if o != m {
            assert_eq!(
                *m, grown,
                "a call moved between members whose weight did not change"
            );
        }
    }
    let share = new.iter().filter(|&&o| o == grown).count() as f64 / f64::from(CALLS);
    assert!((share - 0.5).abs() < 0.02, "share {share:.4}");
}

#[test]
fn failover_order_spreads_a_dead_members_calls_over_the_rest() {
    let specs: Vec<BackendSpec> = (1..=4).map(|i| spec(i, 1)).collect();
    let pool = Pool::new(&specs).unwrap();
    let dead = pool.backends()[0].id();
    pool.by_id(dead).unwrap().set_up(false);
    let bl = Blacklist::default();
    let now = Instant::now();
    let mut per_member = [0u32; 4];
    for i in 0..CALLS {
        let order: Vec<BackendId> = pool
            .candidates(call_id(i).as_bytes(), now, &bl)
            .map(|b| b.id())
            .collect();
        assert_eq!(order.len(), 3);
        assert!(!order.contains(&dead));
        if let Some(pos) = pool.backends().iter().position(|b| b.id() == order[0]) {
            per_member[pos] += 1;
        }
    }
    // The survivors share the load evenly (a third each).
    for &c in &per_member[1..] {
        let share = f64::from(c) / f64::from(CALLS);
        assert!((share - 1.0 / 3.0).abs() < 0.02, "{per_member:?}");
    }
}
