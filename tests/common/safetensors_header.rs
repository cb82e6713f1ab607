//! Reading and rewriting a safetensors file's JSON header, for tests that
//! build bad checkpoints.
#![allow(dead_code)]

/// The JSON header of a safetensors file.
pub fn header(bytes: &[u8]) -> String {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    String::from_utf8(bytes[8..8 + n].to_vec()).unwrap()
}

/// `bytes` with its header text replaced by `f` of it, padded with spaces
/// to 8 bytes and the length prefix rewritten to match.
pub fn with_header(bytes: &[u8], f: impl FnOnce(&str) -> String) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut head = f(&header(bytes)).into_bytes();
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut out = (head.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&head);
    out.extend_from_slice(&bytes[8 + n..]);
    out
}
