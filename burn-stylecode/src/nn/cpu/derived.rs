//! Values derived from a weight once (a convolution's inner taps) and kept
//! while the weight's storage lives.
//!
//! burn-flex tensors share their storage through an `Arc`. An entry holds a
//! `Weak` to it, so it keeps neither the weight nor a stale copy alive:
//! - burn-flex writes in place only through `Arc::make_mut` and
//!   `Arc::get_mut`, which, with a `Weak` outstanding, move the values to a
//!   new allocation or decline. A live `Weak` to a tensor's storage therefore
//!   means the values the entry was derived from.
//! - The `Weak` keeps the allocation's header, so its address is not reused
//!   while the entry exists.
//!
//! An entry lives on a parameter's storage, not its id: burn-store's
//! `load_from` gives parameters fresh ids, and an optimizer step keeps the id
//! with new values. Entries whose storage is gone are dropped on every call.

use burn_flex::FlexTensor;
use std::any::Any;
use std::sync::{Arc, Mutex, Weak};

/// What was derived from which view of which storage.
struct Entry {
    storage: Weak<dyn Any + Send + Sync>,
    offset: usize,
    shape: Vec<usize>,
    strides: Vec<isize>,
    derivation: [usize; 4],
    values: Arc<[f32]>,
}

impl Entry {
    fn derives(&self, storage: *const (), tensor: &FlexTensor, derivation: [usize; 4]) -> bool {
        let layout = tensor.layout();
        std::ptr::addr_eq(self.storage.as_ptr(), storage)
            && self.storage.strong_count() > 0
            && self.derivation == derivation
            && self.offset == layout.start_offset()
            && self.shape == layout.shape().as_slice()
            && self.strides == layout.strides()
    }
}

static ENTRIES: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// `make(tensor)`, made on the first call for this view of this storage and
/// `derivation` (the caller's description of what it derives), and kept
/// until the storage is freed or written.
pub(crate) fn derived(
    tensor: &FlexTensor,
    derivation: [usize; 4],
    make: impl FnOnce(&FlexTensor) -> Vec<f32>,
) -> Arc<[f32]> {
    let storage: Arc<dyn Any + Send + Sync> = tensor.data_arc();
    let address = Arc::as_ptr(&storage) as *const ();
    {
        let mut entries = ENTRIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        entries.retain(|entry| entry.storage.strong_count() > 0);
        if let Some(entry) = entries.iter().find(|entry| entry.derives(address, tensor, derivation)) {
            return entry.values.clone();
        }
    }
    // Made outside the lock (it may take a while, and runs on rayon's pool).
    let values: Arc<[f32]> = make(tensor).into();
    let mut entries = ENTRIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !entries.iter().any(|entry| entry.derives(address, tensor, derivation)) {
        let layout = tensor.layout();
        entries.push(Entry {
            storage: Arc::downgrade(&storage),
            offset: layout.start_offset(),
            shape: layout.shape().to_vec(),
            strides: layout.strides().to_vec(),
            derivation,
            values: values.clone(),
        });
    }
    values
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tensor(values: Vec<f32>) -> FlexTensor {
        let len = values.len();
        FlexTensor::from_data(TensorData::new(values, [len]))
    }

    /// The sum of the tensor's values, counting the calls.
    fn sum(tensor: &FlexTensor, calls: &AtomicUsize) -> Vec<f32> {
        calls.fetch_add(1, Ordering::Relaxed);
        vec![tensor.as_slice::<f32>().expect("contiguous").iter().sum()]
    }

    #[test]
    fn is_made_once_per_storage_view_and_derivation() {
        let calls = AtomicUsize::new(0);
        let weight = tensor(vec![1.0, 2.0, 3.0]);
        let first = derived(&weight, [1, 0, 0, 0], |t| sum(t, &calls));
        // A clone shares the storage (as `Param::val` does).
        let again = derived(&weight.clone(), [1, 0, 0, 0], |t| sum(t, &calls));
        assert!(Arc::ptr_eq(&first, &again) && first[..] == [6.0]);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        // Another derivation, another view of the storage, and equal values in other storage are each their own.
        derived(&weight, [2, 0, 0, 0], |t| sum(t, &calls));
        derived(&weight.narrow(0, 1, 2), [1, 0, 0, 0], |t| {
            vec![t.to_contiguous().as_slice::<f32>().unwrap().iter().sum()]
        });
        let other = tensor(vec![1.0, 2.0, 3.0]);
        derived(&other, [1, 0, 0, 0], |t| sum(t, &calls));
        assert_eq!(calls.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn a_write_to_the_storage_makes_it_again() {
        let calls = AtomicUsize::new(0);
        let mut weight = tensor(vec![1.0, 2.0, 3.0]);
        assert_eq!(derived(&weight, [3, 0, 0, 0], |t| sum(t, &calls))[..], [6.0]);
        // The tensor is the storage's one owner: burn-flex would write in place here.
        assert!(weight.is_unique());
        weight.storage_mut::<f32>()[0] = 10.0;
        assert_eq!(derived(&weight, [3, 0, 0, 0], |t| sum(t, &calls))[..], [15.0]);
        assert_eq!(calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn is_dropped_with_its_storage() {
        // A length no other test derives.
        let len = 3 * 21_851;
        let weight = tensor(vec![0.5; len]);
        derived(&weight, [4, 0, 0, 0], |t| t.as_slice::<f32>().unwrap().to_vec());
        let view = weight.reshape(burn::tensor::Shape::new([len / 3, 3]));
        drop(weight);
        let kept = |entries: &[Entry]| entries.iter().any(|entry| entry.values.len() == len);
        // A view keeps the storage alive, and so the entry.
        derived(&tensor(vec![1.0]), [4, 0, 0, 0], |t| t.as_slice::<f32>().unwrap().to_vec());
        assert!(kept(&ENTRIES.lock().unwrap()));
        drop(view);
        derived(&tensor(vec![1.0]), [4, 0, 0, 0], |t| t.as_slice::<f32>().unwrap().to_vec());
        assert!(!kept(&ENTRIES.lock().unwrap()));
    }
}
