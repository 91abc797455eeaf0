use super::*;

#[tokio::test]
async fn queue_overflow_is_429_with_retry_after() {
    let a = Arc::new(Admission::new(1, 1, Duration::from_secs(5)));
    let held = a.admit("k").await;
    assert!(held.is_ok());
    let a2 = a.clone();
    let waiter = tokio::spawn(async move { a2.admit("k").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(a.waiting(), 1);
    let third = a.admit("k").await;
    match third {
        Err(e) => {
            assert_eq!(e.status().as_u16(), 429);
            assert!(e.parts().3.is_some());
        }
        Ok(_) => unreachable!("a full queue must refuse"),
    }
    drop(held);
    assert!(matches!(waiter.await, Ok(Ok(()))));
    assert_eq!(a.waiting(), 0);
    assert_eq!(a.free_slots(), 1);
}

#[tokio::test]
async fn wait_times_out_into_429_and_loses_no_slot() {
    let a = Admission::new(1, 4, Duration::from_millis(50));
    let held = a.admit("k").await;
    let r = a.admit("k").await;
    assert_eq!(r.err().map(|e| e.status().as_u16()), Some(429));
    assert_eq!(a.waiting(), 0);
    drop(held);
    assert_eq!(a.free_slots(), 1);
}

/// A request from a quiet key goes ahead of a flood from another.
#[tokio::test]
async fn freed_slots_go_round_robin_across_keys() {
    let a = Arc::new(Admission::new(1, 64, Duration::from_secs(5)));
    let held = a.admit("flood").await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let key = if i == 5 { "polite" } else { "flood" };
        let (a, tx) = (a.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            if let Ok(p) = a.admit(key).await {
                let _ = tx.send(key);
                tokio::time::sleep(Duration::from_millis(5)).await;
                drop(p);
            }
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(held);
    let first = rx.recv().await;
    let second = rx.recv().await;
    // The flood had the running slot: the other key goes next.
    assert_eq!(first, Some("polite"));
    assert_eq!(second, Some("flood"));
    for t in tasks {
        let _ = t.await;
    }
    assert_eq!(a.free_slots(), 1);
}

#[tokio::test]
async fn a_group_takes_all_its_slots_at_once_and_is_not_starved() {
    let a = Arc::new(Admission::new(3, 8, Duration::from_secs(5)));
    let one = a.admit("k").await;
    assert!(one.is_ok());
    let a2 = a.clone();
    let group = tokio::spawn(async move { a2.admit_many("g", 3).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!group.is_finished(), "three slots are not free yet");
    // Two slots are free, but a newcomer queues behind the waiting group.
    let a3 = a.clone();
    let late = tokio::spawn(async move { a3.admit("k2").await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !late.is_finished(),
        "a later single request must not overtake the group"
    );
    drop(one);
    assert!(matches!(group.await, Ok(Ok(()))));
    assert!(matches!(late.await, Ok(Ok(()))));
    assert_eq!(a.free_slots(), 3);
}

#[tokio::test]
async fn a_group_that_gives_up_lets_smaller_waiters_in() {
    let a = Arc::new(Admission::new(2, 8, Duration::from_millis(100)));
    let one = a.admit("k").await;
    assert!(one.is_ok());
    let a2 = a.clone();
    let group = tokio::spawn(async move { a2.admit_many("g", 2).await.map(|_| ()) });
    tokio::time::sleep(Duration::from_millis(20)).await;
    let a3 = a.clone();
    let small = tokio::spawn(async move { a3.admit("s").await.map(|_| ()) });
    // The group times out (one slot stays held); the single waiter then gets the free slot.
    assert!(matches!(group.await, Ok(Err(_))));
    assert!(matches!(small.await, Ok(Ok(()))));
    drop(one);
}
