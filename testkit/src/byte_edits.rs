//! Byte-level edits for the proptest twins of the fuzz targets.

/// Applies `edits` to `bytes` in order; each `(at, byte, op)` overwrites (`op % 3 == 0`),
/// inserts (`1`) or deletes (`2`) at `at % len`. An empty input stays empty.
pub fn apply_byte_edits(mut bytes: Vec<u8>, edits: &[(usize, u8, u8)]) -> Vec<u8> {
    for &(at, byte, op) in edits {
        if bytes.is_empty() {
            break;
        }
        let i = at % bytes.len();
        match op % 3 {
            0 => bytes[i] = byte,
            1 => bytes.insert(i, byte),
            _ => {
                bytes.remove(i);
            }
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::apply_byte_edits;

    #[test]
    fn overwrites_inserts_and_deletes() {
        let edited = apply_byte_edits(b"abc".to_vec(), &[(0, b'x', 0), (4, b'y', 1), (2, 0, 2)]);
        // overwrite at 0: "xbc"; insert at 4 % 3 = 1: "xybc"; delete at 2 % 4 = 2: "xyc"
        assert_eq!(edited, b"xyc".to_vec());
        assert!(apply_byte_edits(Vec::new(), &[(0, 1, 1)]).is_empty());
    }
}
