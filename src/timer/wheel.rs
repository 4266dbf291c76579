//! A hierarchical timing wheel: six levels of 64 slots, level 0 one
//! millisecond per slot, each level 64 times coarser than the one below.
//! Arming and cancelling are O(1) (an entry is linked into one slot's list);
//! time moves forward with `advance`, which fires what is due and moves
//! entries of coarser slots down as their time comes. No clock and no I/O:
//! the caller passes the time in, in milliseconds.

/// Slots per level, as a power of two.
const SLOT_BITS: u32 = 6;
const SLOTS: usize = 1 << SLOT_BITS;
const LEVELS: usize = 6;
/// The span of the top level: 2^36 ms, about 795 days. A later deadline is
/// parked at the end of that span and placed again when it is reached.
const SPAN: u64 = 1 << (SLOT_BITS * LEVELS as u32);
const NIL: u32 = u32::MAX;
/// The `level` of an entry on the overdue list.
const OVERDUE: u8 = LEVELS as u8;

/// Names an armed timer, to cancel it. Stale ids (the timer fired or was
/// cancelled, and its entry reused) are recognised by their generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TimerId {
    index: u32,
    generation: u32,
}

enum Entry<T> {
    Free {
        next_free: u32,
    },
    Armed {
        deadline: u64,
        level: u8,
        slot: u8,
        prev: u32,
        next: u32,
        value: T,
    },
}

struct Cell<T> {
    generation: u32,
    entry: Entry<T>,
}

#[derive(Clone, Copy)]
struct Level {
    occupied: u64,
    heads: [u32; SLOTS],
}

pub struct TimerWheel<T> {
    /// Everything due before this time has fired; the next time to look at.
    elapsed: u64,
    levels: [Level; LEVELS],
    /// Timers armed for a time the wheel has already passed: they fire at
    /// the next `advance`, whatever time it is given.
    overdue: u32,
    cells: Vec<Cell<T>>,
    free: u32,
    len: usize,
}

impl<T> TimerWheel<T> {
    /// A wheel whose clock starts at `now`.
    pub fn new(now: u64) -> TimerWheel<T> {
        TimerWheel {
            elapsed: now,
            levels: [Level {
                occupied: 0,
                heads: [NIL; SLOTS],
            }; LEVELS],
            overdue: NIL,
            cells: Vec::new(),
            free: NIL,
            len: 0,
        }
    }

    /// Armed timers.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Arms a timer for `deadline` (unix ms). A deadline already passed
    /// fires at the next `advance`.
    pub fn arm(&mut self, deadline: u64, value: T) -> TimerId {
        let index = match self.free {
            NIL => {
                self.cells.push(Cell {
                    generation: 0,
                    entry: Entry::Free { next_free: NIL },
                });
                (self.cells.len() - 1) as u32
            }
            index => index,
        };
        let cell = &mut self.cells[index as usize];
        if let Entry::Free { next_free } = cell.entry {
            self.free = next_free;
        }
        cell.entry = Entry::Armed {
            deadline,
            level: 0,
            slot: 0,
            prev: NIL,
            next: NIL,
            value,
        };
        let generation = cell.generation;
        self.len += 1;
        self.place(index);
        TimerId { index, generation }
    }

    /// Cancels a timer; returns its value if it was still armed.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let cell = self.cells.get(id.index as usize)?;
        if cell.generation != id.generation || !matches!(cell.entry, Entry::Armed { .. }) {
            return None;
        }
        self.unlink(id.index);
        Some(self.release(id.index))
    }

    /// When `advance` next has something to do: a deadline, or the time a
    /// coarser slot must be moved down (never later than the earliest
    /// deadline).
    pub fn next_deadline(&self) -> Option<u64> {
        if self.overdue != NIL {
            return Some(self.elapsed.saturating_sub(1));
        }
        self.next_slot().map(|(_, _, at)| at)
    }

    /// Moves the clock to `now` and returns the values of every timer due
    /// by then, earliest first.
    pub fn advance(&mut self, now: u64) -> Vec<T> {
        let mut fired = Vec::new();
        let mut index = std::mem::replace(&mut self.overdue, NIL);
        while index != NIL {
            let Entry::Armed { next, .. } = self.cells[index as usize].entry else {
                unreachable!("the overdue list holds armed entries only");
            };
            fired.push(self.release(index));
            index = next;
        }
        while let Some((level, slot, at)) = self.next_slot() {
            if at > now {
                break;
            }
            self.elapsed = self.elapsed.max(at);
            let mut index = self.take_slot(level, slot);
            while index != NIL {
                let Entry::Armed { next, deadline, .. } = self.cells[index as usize].entry else {
                    unreachable!("slot lists hold armed entries only");
                };
                if deadline <= self.elapsed || (level == 0 && deadline <= now) {
                    fired.push(self.release(index));
                } else {
                    self.place(index);
                }
                index = next;
            }
            if level == 0 {
                self.elapsed = at + 1;
            }
        }
        self.elapsed = self.elapsed.max(now.saturating_add(1));
        fired
    }

    /// Links an armed entry into the slot its deadline belongs to, as seen
    /// from `elapsed`.
    fn place(&mut self, index: u32) {
        let Entry::Armed { deadline, .. } = self.cells[index as usize].entry else {
            return;
        };
        if deadline < self.elapsed {
            let head = self.overdue;
            self.link(index, OVERDUE, 0, head);
            self.overdue = index;
            return;
        }
        let at = deadline.min(self.elapsed | (SPAN - 1));
        let significant = 63 - ((self.elapsed ^ at) | (SLOTS as u64 - 1)).leading_zeros();
        let level = (significant / SLOT_BITS) as usize;
        let slot = ((at >> (SLOT_BITS * level as u32)) & (SLOTS as u64 - 1)) as usize;
        let head = self.levels[level].heads[slot];
        self.link(index, level as u8, slot as u8, head);
        self.levels[level].heads[slot] = index;
        self.levels[level].occupied |= 1 << slot;
    }

    /// Puts an entry in front of `head` in the list of (`level`, `slot`).
    fn link(&mut self, index: u32, level: u8, slot: u8, head: u32) {
        if let Entry::Armed {
            level: l,
            slot: s,
            prev,
            next,
            ..
        } = &mut self.cells[index as usize].entry
        {
            *l = level;
            *s = slot;
            *prev = NIL;
            *next = head;
        }
        if head != NIL
            && let Entry::Armed { prev, .. } = &mut self.cells[head as usize].entry
        {
            *prev = index;
        }
    }

    fn unlink(&mut self, index: u32) {
        let Entry::Armed {
            level,
            slot,
            prev,
            next,
            ..
        } = self.cells[index as usize].entry
        else {
            return;
        };
        if next != NIL
            && let Entry::Armed { prev: p, .. } = &mut self.cells[next as usize].entry
        {
            *p = prev;
        }
        if prev != NIL {
            if let Entry::Armed { next: n, .. } = &mut self.cells[prev as usize].entry {
                *n = next;
            }
            return;
        }
        if level == OVERDUE {
            self.overdue = next;
            return;
        }
        let (level, slot) = (level as usize, slot as usize);
        self.levels[level].heads[slot] = next;
        if next == NIL {
            self.levels[level].occupied &= !(1 << slot);
        }
    }

    /// Empties a slot, returning the head of its list (still linked).
    fn take_slot(&mut self, level: usize, slot: usize) -> u32 {
        self.levels[level].occupied &= !(1 << slot);
        std::mem::replace(&mut self.levels[level].heads[slot], NIL)
    }

    /// Frees an entry (already unlinked) and returns its value.
    fn release(&mut self, index: u32) -> T {
        let cell = &mut self.cells[index as usize];
        cell.generation = cell.generation.wrapping_add(1);
        let entry = std::mem::replace(
            &mut cell.entry,
            Entry::Free {
                next_free: self.free,
            },
        );
        self.free = index;
        self.len -= 1;
        match entry {
            Entry::Armed { value, .. } => value,
            Entry::Free { .. } => unreachable!("only armed entries are released"),
        }
    }

    /// The occupied slot to handle first: (level, slot, its start time).
    /// On equal start times the coarser level goes first, so its entries
    /// join the finer slot before that fires.
    fn next_slot(&self) -> Option<(usize, usize, u64)> {
        let mut best: Option<(usize, usize, u64)> = None;
        for (level, state) in self.levels.iter().enumerate().rev() {
            if state.occupied == 0 {
                continue;
            }
            let shift = SLOT_BITS * level as u32;
            let slot_range = 1u64 << shift;
            let level_range = slot_range << SLOT_BITS;
            let current = ((self.elapsed >> shift) & (SLOTS as u64 - 1)) as u32;
            let rotated = state.occupied.rotate_right(current);
            let slot = (rotated.trailing_zeros() + current) as usize % SLOTS;
            let level_start = self.elapsed & !(level_range - 1);
            let mut at = level_start + slot as u64 * slot_range;
            if (slot as u32) < current {
                at += level_range;
            }
            if best.is_none_or(|(_, _, earliest)| at < earliest) {
                best = Some((level, slot, at));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn timers_fire_at_their_deadline_in_order() {
        let mut wheel = TimerWheel::new(1_000);
        wheel.arm(1_500, "b");
        wheel.arm(1_010, "a");
        wheel.arm(5_000_000, "c");
        assert_eq!(wheel.advance(1_009), Vec::<&str>::new());
        assert_eq!(wheel.advance(1_010), ["a"]);
        assert_eq!(wheel.advance(4_999_999), ["b"]);
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.advance(5_000_000), ["c"]);
        assert!(wheel.is_empty());
    }

    #[test]
    fn cancelled_timers_never_fire_and_stale_ids_do_nothing() {
        let mut wheel = TimerWheel::new(0);
        let first = wheel.arm(100, 1);
        let second = wheel.arm(100, 2);
        assert_eq!(wheel.cancel(first), Some(1));
        assert_eq!(wheel.cancel(first), None);
        // The freed entry is reused; the old id must not cancel the new timer.
        let third = wheel.arm(200, 3);
        assert_eq!(wheel.cancel(first), None);
        assert_eq!(wheel.advance(1_000), [2, 3]);
        assert_eq!(wheel.cancel(second), None);
        assert_eq!(wheel.cancel(third), None);
    }

    #[test]
    fn past_deadlines_fire_on_the_next_advance() {
        let mut wheel = TimerWheel::new(10_000);
        wheel.arm(5, "late");
        assert!(wheel.next_deadline().is_some_and(|at| at <= 10_000));
        assert_eq!(wheel.advance(10_000), ["late"]);
        // Even when the clock has not moved since the wheel last advanced.
        wheel.arm(10_000, "same instant");
        assert_eq!(wheel.advance(10_000), ["same instant"]);
    }

    #[test]
    fn deadlines_beyond_the_top_level_wait_their_turn() {
        let mut wheel = TimerWheel::new(0);
        let far = SPAN * 3 + 12_345;
        wheel.arm(far, "far");
        wheel.arm(SPAN - 1, "edge");
        let mut now = 0;
        let mut fired = Vec::new();
        while let Some(next) = wheel.next_deadline() {
            assert!(next >= now, "time never moves back");
            now = next;
            for value in wheel.advance(now) {
                fired.push((now, value));
            }
        }
        assert_eq!(fired, [(SPAN - 1, "edge"), (far, "far")]);
    }

    #[test]
    fn next_deadline_is_never_later_than_the_earliest_timer() {
        let mut wheel = TimerWheel::new(0);
        wheel.arm(70_000, ());
        let next = wheel.next_deadline().unwrap();
        assert!(next <= 70_000);
    }

    /// The wheel against a plain ordered map, over random arms, cancels and
    /// clock jumps: the same timers fire at the same times.
    #[test]
    fn behaves_like_an_ordered_map_of_deadlines() {
        let mut seed = 0x2545_F491_4F6C_DD1D_u64;
        let mut random = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut wheel = TimerWheel::new(1_000_000);
        let mut model: BTreeMap<(u64, u64), TimerId> = BTreeMap::new();
        let mut now = 1_000_000u64;
        for round in 0..20_000u64 {
            match random() % 4 {
                0 | 1 => {
                    let reach = [64, 4_096, 262_144, 16_777_216, 1 << 33][(random() % 5) as usize];
                    let deadline = now + random() % reach;
                    let id = wheel.arm(deadline, round);
                    model.insert((deadline, round), id);
                }
                2 if !model.is_empty() => {
                    let pick = random() as usize % model.len();
                    let key = *model.keys().nth(pick).unwrap();
                    let id = model.remove(&key).unwrap();
                    assert_eq!(wheel.cancel(id), Some(key.1));
                }
                _ => {
                    now += random() % [10, 1_000, 100_000, 50_000_000][(random() % 4) as usize];
                    let mut fired = wheel.advance(now);
                    let mut due: Vec<u64> = model
                        .range(..(now + 1, 0))
                        .map(|(&(_, value), _)| value)
                        .collect();
                    model.retain(|&(deadline, _), _| deadline > now);
                    fired.sort_unstable();
                    due.sort_unstable();
                    assert_eq!(fired, due, "at {now}");
                }
            }
            assert_eq!(wheel.len(), model.len());
            if let (Some(next), Some((&(first, _), _))) =
                (wheel.next_deadline(), model.iter().next())
            {
                assert!(next <= first.max(now + 1));
            }
        }
    }
}
