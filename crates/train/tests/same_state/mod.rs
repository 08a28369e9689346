//! Checkpoints in tests: which are on disk, and comparing two tensor by tensor (tests of train
//! only: other crates include `common`, which must not need corenet-train).

use std::path::Path;

/// Every model and optimizer tensor of checkpoint `a` equals `b`'s bit for bit (either
/// layout).
pub fn assert_same_state(a: &Path, b: &Path) {
    let read = |dir: &Path| corenet_train::checkpoint::contents::read_tensors(dir).expect("read");
    let (ta, tb) = (read(a), read(b));
    for (x, y) in [(&ta.model, &tb.model), (&ta.optimizer, &tb.optimizer)] {
        let names = |list: &[(String, tch::Tensor)]| -> Vec<String> {
            list.iter().map(|(n, _)| n.clone()).collect()
        };
        assert_eq!(names(x), names(y));
        for ((name, va), (_, vb)) in x.iter().zip(y) {
            assert!(
                va.equal(vb),
                "`{name}` differs: {} vs {}",
                a.display(),
                b.display()
            );
        }
    }
}

/// The steps of the complete checkpoints in `checkpoint_dir`, oldest first.
pub fn steps_on_disk(checkpoint_dir: &Path) -> Vec<u64> {
    let store =
        corenet_train::checkpoint::store::CheckpointStore::new(checkpoint_dir, 0).expect("store");
    store
        .list()
        .expect("list")
        .into_iter()
        .map(|e| e.step)
        .collect()
}
