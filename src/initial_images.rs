//! Modules' initial images: a module's memory right after instantiation under a set of grants,
//! what durable snapshots are taken against (`durable::initial_image`). Two bounds hold them:
//! - per module, the images of its `MAX_INITIAL_IMAGES` most recently used sets of grants
//!   (unbounded, they grew with every set ever asked for while the module stayed cached: a
//!   rotated token, each tenant's executor giving its own value to a shared module);
//! - per process, `MAX_IMAGE_BYTES` of images together, least recently used first whatever
//!   module holds them. An initializer that writes its memory makes each image as large as that
//!   memory (up to a definition's `maxMemoryMB`), and images were counted in no limit: 8 per
//!   module of every cached module.
//!
//! An image dropped is made again when next asked for, as a new process makes it. An image past
//! the process's budget on its own is used by the calls that asked for it, and not kept.

use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};

use lru::LruCache;

use crate::capabilities::Grants;

/// How many sets of grants keep their image per module.
pub const MAX_INITIAL_IMAGES: usize = 8;
/// Bytes of images the process keeps together.
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

/// An image, counted in its budget for as long as it lives (kept by its module, or in use).
pub struct Image {
    bytes: Vec<u8>,
    budget: Arc<Budget>,
}

impl Deref for Image {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.bytes.len() as u64, Ordering::AcqRel);
    }
}

/// One set of grants' image, made once by whichever asker comes first.
pub type ImageCell = Arc<tokio::sync::OnceCell<Arc<Image>>>;

type Cells = Mutex<LruCache<Grants, ImageCell>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Images kept across modules, in the order they were last used.
pub struct Budget {
    max: u64,
    /// Bytes of the images alive now.
    held: AtomicU64,
    /// Kept images by their cell's address, least recently used first. Lock order: `order`, then
    /// a module's cells; never the other way round.
    order: Mutex<LruCache<usize, Kept>>,
}

/// Where a kept image is, to drop it.
struct Kept {
    cells: Weak<Cells>,
    grants: Grants,
    cell: Weak<tokio::sync::OnceCell<Arc<Image>>>,
}

impl Budget {
    pub fn new(max: u64) -> Arc<Budget> {
        Arc::new(Budget { max, held: AtomicU64::new(0), order: Mutex::new(LruCache::unbounded()) })
    }

    /// The process's budget.
    pub fn process() -> Arc<Budget> {
        static PROCESS: OnceLock<Arc<Budget>> = OnceLock::new();
        PROCESS.get_or_init(|| Budget::new(MAX_IMAGE_BYTES)).clone()
    }

    /// Bytes of the images alive now.
    pub fn held(&self) -> u64 {
        self.held.load(Ordering::Acquire)
    }

    fn forget(&self, cell: &ImageCell) {
        lock(&self.order).pop(&(Arc::as_ptr(cell) as usize));
    }

    /// Drops kept images, least recently used first, until those alive fit (or none is kept).
    fn enforce(&self, order: &mut LruCache<usize, Kept>) {
        while self.held() > self.max {
            let Some((_, kept)) = order.pop_lru() else { return };
            let (Some(cells), Some(cell)) = (kept.cells.upgrade(), kept.cell.upgrade()) else { continue };
            let mut cells = lock(&cells);
            if cells.peek(&kept.grants).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
                cells.pop(&kept.grants);
            }
        }
    }
}

/// One module's images.
pub struct InitialImages {
    cells: Arc<Cells>,
    budget: Arc<Budget>,
}

impl Default for InitialImages {
    fn default() -> Self {
        InitialImages::new(Budget::process())
    }
}

impl InitialImages {
    pub fn new(budget: Arc<Budget>) -> Self {
        let cap = std::num::NonZeroUsize::new(MAX_INITIAL_IMAGES).unwrap_or(std::num::NonZeroUsize::MIN);
        InitialImages { cells: Arc::new(Mutex::new(LruCache::new(cap))), budget }
    }

    /// The cell of `grants`' image (made empty if there is none; the least recently used goes).
    pub fn cell(&self, grants: &Grants) -> ImageCell {
        let (cell, evicted) = {
            let mut cells = lock(&self.cells);
            match cells.get(grants) {
                Some(cell) => (cell.clone(), None),
                None => {
                    let cell = ImageCell::default();
                    let evicted = cells.push(grants.clone(), cell.clone()).map(|(_, c)| c);
                    (cell, evicted)
                }
            }
        };
        if let Some(evicted) = evicted {
            self.budget.forget(&evicted);
        }
        cell
    }

    /// An image made of `bytes`, counted in the budget.
    pub fn image(&self, bytes: Vec<u8>) -> Arc<Image> {
        self.budget.held.fetch_add(bytes.len() as u64, Ordering::AcqRel);
        Arc::new(Image { bytes, budget: self.budget.clone() })
    }

    /// `grants`' image in `cell` was just used: it is kept as the most recently used, and the
    /// least recently used go while the images alive are past the budget (this one too, when it
    /// is the last one left).
    pub fn used(&self, grants: &Grants, cell: &ImageCell) {
        let mut order = lock(&self.budget.order);
        let id = Arc::as_ptr(cell) as usize;
        // An entry's `Weak` keeps its cell's allocation, so no other cell has that address.
        let known = order.get(&id).is_some();
        // Kept only while its module still holds it (another set's image may have pushed it out).
        let held = lock(&self.cells).peek(grants).is_some_and(|c| Arc::ptr_eq(c, cell));
        if !known && held {
            let kept = Kept { cells: Arc::downgrade(&self.cells), grants: grants.clone(), cell: Arc::downgrade(cell) };
            order.put(id, kept);
        }
        self.budget.enforce(&mut order);
    }

    /// How many sets of grants hold a cell now.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        lock(&self.cells).len()
    }
}

impl Drop for InitialImages {
    fn drop(&mut self) {
        let cells: Vec<ImageCell> = lock(&self.cells).iter().map(|(_, c)| c.clone()).collect();
        let mut order = lock(&self.budget.order);
        for cell in &cells {
            order.pop(&(Arc::as_ptr(cell) as usize));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: usize = 1 << 20;

    fn grants(n: usize) -> Grants {
        Grants { env: vec![(format!("V{n}"), "x".into())], ..Default::default() }
    }

    /// Makes `grants(n)`'s image of `size` bytes in `m`, as `durable::initial_image` does.
    async fn make(m: &InitialImages, n: usize, size: usize) -> Arc<Image> {
        let cell = m.cell(&grants(n));
        let image = cell.get_or_init(|| async { m.image(vec![1; size]) }).await.clone();
        m.used(&grants(n), &cell);
        image
    }

    fn kept(m: &InitialImages, n: usize) -> bool {
        lock(&m.cells).peek(&grants(n)).is_some_and(|c| c.initialized())
    }

    #[tokio::test]
    async fn images_of_all_modules_together_stay_within_the_budget_least_recently_used_first() {
        let budget = Budget::new(3 * MIB as u64);
        let (a, b) = (InitialImages::new(budget.clone()), InitialImages::new(budget.clone()));
        drop(make(&a, 0, MIB).await);
        drop(make(&b, 0, MIB).await);
        drop(make(&a, 1, MIB).await);
        assert_eq!(budget.held(), 3 * MIB as u64);
        // a's first image is used again: b's is now the least recently used.
        drop(make(&a, 0, MIB).await);
        drop(make(&b, 1, MIB).await);
        assert_eq!(budget.held(), 3 * MIB as u64, "one image went for the new one");
        assert!(!kept(&b, 0), "the least recently used image, whatever module holds it");
        assert!(kept(&a, 0) && kept(&a, 1) && kept(&b, 1));
        // A module dropped takes its images out of the budget.
        drop(a);
        assert_eq!(budget.held(), MIB as u64);
        assert_eq!(lock(&budget.order).len(), 1);
    }

    #[tokio::test]
    async fn an_image_past_the_budget_is_used_and_not_kept() {
        let budget = Budget::new(2 * MIB as u64);
        let m = InitialImages::new(budget.clone());
        drop(make(&m, 0, MIB).await);
        let big = make(&m, 1, 3 * MIB).await;
        assert_eq!(big.len(), 3 * MIB, "the asker has it");
        assert!(!kept(&m, 1) && !kept(&m, 0), "neither fits beside it");
        drop(big);
        assert_eq!(budget.held(), 0);
        // Asked for again, it is made again (and again not kept).
        drop(make(&m, 1, 3 * MIB).await);
        assert_eq!(budget.held(), 0);
        assert!(lock(&budget.order).is_empty());
    }

    /// Many askers racing over four modules' images: when they are done, what is alive fits the
    /// budget, and the budget's order holds exactly the images the modules keep.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn racing_askers_leave_the_budget_and_the_modules_in_agreement() {
        let budget = Budget::new(2 * MIB as u64);
        let modules: Arc<Vec<InitialImages>> = Arc::new((0..4).map(|_| InitialImages::new(budget.clone())).collect());
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let modules = modules.clone();
                tokio::spawn(async move {
                    for i in 0..200 {
                        let m = &modules[(t + i) % 4];
                        drop(make(m, (t * 7 + i) % 11, 256 * 1024).await);
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("no panic");
        }
        assert!(budget.held() <= 2 * MIB as u64, "{} bytes alive", budget.held());
        let kept: usize = modules.iter().map(|m| lock(&m.cells).iter().filter(|(_, c)| c.initialized()).count()).sum();
        assert_eq!(lock(&budget.order).len(), kept);
        assert_eq!(budget.held(), (kept * 256 * 1024) as u64);
    }

    #[tokio::test]
    async fn an_image_pushed_out_of_its_module_leaves_the_budget() {
        let budget = Budget::new(u64::MAX);
        let m = InitialImages::new(budget.clone());
        for n in 0..MAX_INITIAL_IMAGES + 4 {
            drop(make(&m, n, 4096).await);
        }
        assert_eq!(m.len(), MAX_INITIAL_IMAGES);
        assert_eq!(budget.held(), (MAX_INITIAL_IMAGES * 4096) as u64);
        assert_eq!(lock(&budget.order).len(), MAX_INITIAL_IMAGES);
    }
}
