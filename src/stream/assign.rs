//! Which member of a consumer group reads which partitions.
//!
//! Deterministic, so every rebalance gives the same answer for the same
//! members whatever order they joined in: members are sorted by id and
//! partitions dealt out in ranges, the first `partitions % members`
//! members taking one more. Members beyond the partition count stand by
//! with none, ready to take over when another leaves.

/// The partitions each of `members` reads, in the members' sorted order:
/// `(member, partitions)`.
pub fn assign<'m>(members: &[&'m str], partitions: u32) -> Vec<(&'m str, Vec<u32>)> {
    let mut sorted: Vec<&str> = members.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let count = sorted.len() as u32;
    let mut next = 0;
    sorted
        .into_iter()
        .enumerate()
        .map(|(index, member)| {
            let share = match count {
                0 => 0,
                _ => partitions / count + u32::from((index as u32) < partitions % count),
            };
            let range = (next..next + share).collect();
            next += share;
            (member, range)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_dealt_in_ranges_by_member_id_whatever_the_join_order() {
        let dealt = assign(&["c", "a", "b"], 8);
        assert_eq!(
            dealt,
            [
                ("a", vec![0, 1, 2]),
                ("b", vec![3, 4, 5]),
                ("c", vec![6, 7])
            ]
        );
        assert_eq!(assign(&["b", "c", "a"], 8), dealt);
    }

    #[test]
    fn every_partition_has_exactly_one_reader_and_extra_members_stand_by() {
        for members in 1..=10usize {
            let ids: Vec<String> = (0..members).map(|i| format!("m{i:02}")).collect();
            let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
            let dealt = assign(&refs, 4);
            let mut all: Vec<u32> = dealt.iter().flat_map(|(_, p)| p.clone()).collect();
            all.sort_unstable();
            assert_eq!(all, [0, 1, 2, 3], "{members} members");
            let idle = dealt.iter().filter(|(_, p)| p.is_empty()).count();
            assert_eq!(idle, members.saturating_sub(4));
        }
        assert!(assign(&[], 4).is_empty());
    }
}
