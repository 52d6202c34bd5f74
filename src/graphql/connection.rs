//! Relay paging over amoCRM's page numbers: cursors are offsets into one list, and a window is
//! cut out of fixed-size upstream pages, so overlapping windows of a list reuse the same pages.
//! Pure arithmetic, tested without a server.

use std::future::Future;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::amocrm::ContactList;

const CURSOR_VERSION: &str = "c1";
/// Deeper than any real amoCRM account lists; keeps page numbers and sums far from overflow.
pub const MAX_OFFSET: u64 = u32::MAX as u64;

/// Identifies a list (search, filter, order) so a cursor cannot be used on another list, where
/// its offset would point at unrelated contacts. Stable across restarts and replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListFingerprint(u64);

impl ListFingerprint {
    pub fn of(list: &ContactList) -> Self {
        let digest = crate::amocrm::params_digest(&list.to_params());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        ListFingerprint(u64::from_be_bytes(first))
    }
}

/// The position of one item in one list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub offset: u64,
    pub list: ListFingerprint,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CursorError {
    #[error("is not a cursor returned by this gateway")]
    Malformed,
    #[error("belongs to a different filter, search or order; start again without `after`")]
    OtherList,
}

impl Cursor {
    pub fn encode(self) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{CURSOR_VERSION}:{}:{:016x}",
            self.offset, self.list.0
        ))
    }

    /// Decodes a cursor and checks that it belongs to `list`.
    pub fn decode(text: &str, list: ListFingerprint) -> Result<Cursor, CursorError> {
        let (offset, fingerprint) = Self::parts(text)?;
        if ListFingerprint(fingerprint) != list {
            return Err(CursorError::OtherList);
        }
        Ok(Cursor { offset, list })
    }

    /// The offset a cursor names, whichever list it belongs to: enough to price the window it
    /// starts before the list's arguments are validated. `None` when it is no cursor at all.
    pub fn offset_of(text: &str) -> Option<u64> {
        Self::parts(text).ok().map(|(offset, _)| offset)
    }

    fn parts(text: &str) -> Result<(u64, u64), CursorError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(text.trim())
            .map_err(|_| CursorError::Malformed)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| CursorError::Malformed)?;
        let mut parts = text.split(':');
        let (Some(CURSOR_VERSION), Some(offset), Some(fingerprint), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(CursorError::Malformed);
        };
        let offset: u64 = offset.parse().map_err(|_| CursorError::Malformed)?;
        let fingerprint =
            u64::from_str_radix(fingerprint, 16).map_err(|_| CursorError::Malformed)?;
        if offset >= MAX_OFFSET {
            return Err(CursorError::Malformed);
        }
        Ok((offset, fingerprint))
    }
}

/// `first` items starting at offset `start`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: u64,
    pub len: u64,
}

impl Window {
    /// How many upstream pages of `page_size` [`slice`] may fetch for this window: pages
    /// `start / size` through `(start + len - 1) / size`, fewer only when the list ends first.
    pub fn pages(self, page_size: usize) -> u64 {
        let size = page_size as u64;
        if self.len == 0 || size == 0 {
            return 0;
        }
        let last = self.start.saturating_add(self.len - 1);
        last / size - self.start / size + 1
    }
}

/// What an upstream page contributes: its items (borrowed from wherever the page lives, so
/// that a small window does not copy a whole page), and whether the list goes on after it.
#[derive(Debug)]
pub struct PageItems<P> {
    pub items: P,
    pub has_more: bool,
}

/// A window's items, and whether the list has items after them.
#[derive(Debug, PartialEq)]
pub struct Slice<T> {
    pub items: Vec<T>,
    pub has_next_page: bool,
}

/// Cuts `window` out of a list served in pages of `page_size`, fetching the pages it touches
/// (1-based page numbers) one after another: a page is only fetched when the previous one shows
/// the list goes on, because upstream calls are the scarce resource.
///
/// `has_next_page` is exact when the window ends inside a page or at the end of the list; when it
/// ends on the last item of a full page that says more may follow, it is `true` without a further
/// call, and the next window is then possibly empty.
pub async fn slice<T, P, E, F, Fut>(
    window: Window,
    page_size: usize,
    mut fetch_page: F,
) -> Result<Slice<T>, E>
where
    T: Clone,
    P: AsRef<[T]>,
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<PageItems<P>, E>>,
{
    let mut items = Vec::new();
    if window.len == 0 || page_size == 0 {
        return Ok(Slice {
            items,
            has_next_page: false,
        });
    }
    let size = page_size as u64;
    let end = window.start.saturating_add(window.len);
    let mut position = window.start;
    loop {
        let page_number = u32::try_from(position / size + 1).unwrap_or(u32::MAX);
        let index = (position % size) as usize;
        let page = fetch_page(page_number).await?;
        let page_items = page.items.as_ref();
        // An upstream that ignores `limit` would shift every later offset; never trust more.
        let available = page_items.len().min(page_size);
        let full = available == page_size;
        let list_goes_on = full && page.has_more;
        if index >= available {
            return Ok(Slice {
                items,
                has_next_page: false,
            });
        }
        let wanted = usize::try_from(end - position).unwrap_or(usize::MAX);
        let take_to = available.min(index.saturating_add(wanted));
        items.extend_from_slice(&page_items[index..take_to]);
        position += (take_to - index) as u64;
        if position == end {
            let has_next_page = take_to < available || list_goes_on;
            return Ok(Slice {
                items,
                has_next_page,
            });
        }
        if !list_goes_on {
            return Ok(Slice {
                items,
                has_next_page: false,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        /// Any text as a cursor: refused cleanly, never a panic.
        #[test]
        fn fuzz_cursor_decoder_refuses_garbage(text in ".{0,200}", bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let list = ListFingerprint::of(&ContactList::default());
            let _ = Cursor::decode(&text, list);
            let _ = Cursor::decode(&URL_SAFE_NO_PAD.encode(&bytes), list);
        }

        /// Every cursor the gateway hands out decodes to itself, and only for its own list.
        #[test]
        fn fuzz_cursors_round_trip(offset in 0..MAX_OFFSET, search in "[a-zа-я0-9 ]{0,20}") {
            let list = ListFingerprint::of(&ContactList { search: Some(search), ..ContactList::default() });
            let cursor = Cursor { offset, list };
            prop_assert_eq!(Cursor::decode(&cursor.encode(), list), Ok(cursor));
        }
    }

    use std::cell::RefCell;
    use std::convert::Infallible;

    use super::*;

    /// A list of `total` numbered items served in pages, recording which pages were asked for.
    fn run(total: u64, page_size: usize, window: Window) -> (Slice<u64>, Vec<u32>) {
        let calls = RefCell::new(Vec::new());
        let fetch = |page: u32| {
            calls.borrow_mut().push(page);
            let start = u64::from(page - 1) * page_size as u64;
            let items: Vec<u64> = (start..total.min(start + page_size as u64)).collect();
            // Like amoCRM, link a next page whenever this one is full.
            let has_more = items.len() == page_size;
            async move { Ok::<_, Infallible>(PageItems { items, has_more }) }
        };
        let result = futures::executor::block_on(slice(window, page_size, fetch));
        let Ok(result) = result;
        (result, calls.into_inner())
    }

    proptest! {
        /// The priced page count is what `slice` fetches from a list long enough, and never
        /// less than it fetches from any list.
        #[test]
        fn priced_pages_bound_the_pages_fetched(
            start in 0u64..2_000, len in 0u64..=250, size in 1usize..=250, total in 0u64..3_000,
        ) {
            let window = Window { start, len };
            let (_, from_long_list) = run(u64::MAX, size, window);
            prop_assert_eq!(window.pages(size), from_long_list.len() as u64);
            let (_, fetched) = run(total, size, window);
            prop_assert!(fetched.len() as u64 <= window.pages(size));
        }
    }

    #[test]
    fn unaligned_window_is_an_exact_slice() {
        let (s, pages) = run(100, 10, Window { start: 7, len: 13 });
        assert_eq!(s.items, (7..20).collect::<Vec<_>>());
        assert!(s.has_next_page);
        assert_eq!(pages, vec![1, 2]);
    }

    #[test]
    fn window_at_the_end_of_the_list_is_exact() {
        let (s, pages) = run(25, 10, Window { start: 20, len: 10 });
        assert_eq!(s.items, (20..25).collect::<Vec<_>>());
        assert!(!s.has_next_page);
        assert_eq!(pages, vec![3]);
        let (s, _) = run(25, 10, Window { start: 22, len: 3 });
        assert!(!s.has_next_page, "ends on the last item of a short page");
    }

    #[test]
    fn window_ending_on_a_full_page_may_say_more_without_a_call() {
        let (s, pages) = run(20, 10, Window { start: 15, len: 5 });
        assert!(s.has_next_page);
        assert_eq!(pages, vec![2]);
        let (next, _) = run(20, 10, Window { start: 20, len: 5 });
        assert!(next.items.is_empty() && !next.has_next_page);
    }

    #[test]
    fn zero_items_make_no_call() {
        let (s, pages) = run(20, 10, Window { start: 3, len: 0 });
        assert!(s.items.is_empty() && pages.is_empty());
    }

    #[test]
    fn walking_with_cursors_yields_every_item_once() {
        for (total, size, step) in [(1003, 250, 50), (1003, 250, 13), (40, 7, 3), (30, 10, 10)] {
            let mut seen = Vec::new();
            let mut start = 0;
            loop {
                let (s, _) = run(total, size, Window { start, len: step });
                start += s.items.len() as u64;
                seen.extend(s.items);
                if !s.has_next_page {
                    break;
                }
            }
            assert_eq!(seen, (0..total).collect::<Vec<_>>());
        }
    }

    #[test]
    fn cursors_round_trip_and_refuse_other_lists_and_garbage() {
        let list = ListFingerprint::of(&ContactList::default());
        let other = ListFingerprint::of(&ContactList {
            search: Some("x".into()),
            ..Default::default()
        });
        let cursor = Cursor { offset: 41, list };
        assert_eq!(Cursor::decode(&cursor.encode(), list), Ok(cursor));
        assert_eq!(
            Cursor::decode(&cursor.encode(), other),
            Err(CursorError::OtherList)
        );
        for garbage in ["", "abc", "Y29u", &URL_SAFE_NO_PAD.encode("c1:-1:00")] {
            assert_eq!(Cursor::decode(garbage, list), Err(CursorError::Malformed));
        }
    }
}
