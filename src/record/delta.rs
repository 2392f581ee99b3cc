//! A page's delta against its base, written directly as a zstd frame (RFC 8878) that any zstd
//! library decodes with the base as a raw-content prefix: the `zstd_delta` of docs/FORMAT.md.
//!
//! Why not libzstd: a page that a transaction changed is mostly its base, unchanged or shifted by
//! a few bytes (SQLite inserts a cell pointer and moves the rest of the array by two bytes, writes
//! a new cell into free space, rewrites a counter in place). Compressing it with libzstd against
//! the base as a prefix cost about 65,000 instructions per page, two thirds of them spent
//! indexing the 4 KiB base and building entropy tables, on the commit path of every transaction.
//! Here the page is compared with its base directly: equal stretches at the same place, or
//! shifted by a few bytes, become matches into the base; what differs becomes literals. The
//! frame is one compressed block with raw literals and the predefined FSE tables, so there is
//! nothing to build; a page costs a comparison with its base and a few hundred instructions per
//! sequence. When the page differs too much for that to pay (`LITERALS_MAX`), the caller uses
//! libzstd, which finds what this does not look for.
//!
//! Only the writer uses this module: readers decode every frame with libzstd, as before. Tests
//! decode every frame this writes with libzstd.

use super::page::ZSTD_DICT_MAGIC;

/// A stretch of the page equal to the base shorter than this stays in the literals: a sequence
/// costs about four bytes (its codes and the 12 or more extra bits of an offset into the base).
const MATCH_MIN: usize = 8;
/// Shifts tried, besides the last one used, where the page stops matching its base in place:
/// a cell pointer inserted or removed moves the rest of the array by two bytes, a cell that grew
/// or shrank by a few bytes moves what follows it.
const SHIFTS: [isize; 16] = [-2, 2, -4, 4, -1, 1, -3, 3, -6, 6, -8, 8, -5, 5, -7, 7];
/// Bytes of literals past which this gives up (the page was rebuilt, or is new): libzstd does
/// better there, and probing every shift at every byte of a page that differs everywhere would
/// cost what libzstd does.
const LITERALS_MAX: usize = 512;

/// Appends to `out` a zstd frame of `page` that decodes with `base` as a raw-content prefix, or
/// returns `None`, appending nothing, when the page differs from its base too much for this
/// encoder (the caller then compresses it with libzstd) or the frame would not be smaller than
/// the page. `page` and `base` have the same length,
/// a page size SQLite can have (512 to 65,536 bytes); a base that starts with zstd's dictionary
/// magic is refused too, since a decoder would read it as a formatted dictionary.
pub fn encode(page: &[u8], base: &[u8], out: &mut Vec<u8>) -> Option<usize> {
    let len = page.len();
    if len != base.len() || !(512..=65536).contains(&len) || base.starts_with(&ZSTD_DICT_MAGIC) {
        return None;
    }
    let sequences = find_sequences(page, base)?;
    let start = out.len();
    write_frame(page, &sequences, out);
    // Not smaller than the page: useless, and a block larger than the page (the window of a
    // single-segment frame) would be invalid.
    if out.len() - start >= len {
        out.truncate(start);
        return None;
    }
    Some(out.len() - start)
}

/// Literals, then a copy of `match_len` bytes of the base starting `shift` bytes from the
/// position the match starts at in the page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sequence {
    /// Literal bytes before the match (they are `page[at - literals..at]`).
    literals: usize,
    /// Where the match starts in the page.
    at: usize,
    match_len: usize,
    /// The match copies `base[at + shift..]`.
    shift: isize,
}

/// Splits the page into literals and matches against the base; `None` past `LITERALS_MAX`.
///
/// Where the page stops matching, it is probed every `MATCH_MIN` bytes rather than at every
/// byte, and a match found is extended backwards over the literals before it: a stretch of
/// 2 * MATCH_MIN - 1 equal bytes or more is found (whole, unless a probe inside it prefers a
/// longer match at another shift), at an eighth of the probes.
fn find_sequences(page: &[u8], base: &[u8]) -> Option<Vec<Sequence>> {
    let len = page.len();
    let mut sequences = Vec::new();
    let mut literal_start = 0;
    let mut literal_total = 0;
    let mut last_shift = 0isize;
    let mut i = 0;
    while i + MATCH_MIN <= len {
        let Some((match_len, shift)) = best_match(page, base, i, last_shift) else {
            if literal_total + (i - literal_start) > LITERALS_MAX {
                return None;
            }
            // The last probe is at the page's last MATCH_MIN bytes.
            let next = i + MATCH_MIN;
            i = if next + MATCH_MIN > len && i + MATCH_MIN < len {
                len - MATCH_MIN
            } else {
                next
            };
            continue;
        };
        let back = common_suffix(&page[literal_start..i], &base[..base_at(i, shift)]);
        let at = i - back;
        let literals = at - literal_start;
        literal_total += literals;
        sequences.push(Sequence {
            literals,
            at,
            match_len: match_len + back,
            shift,
        });
        last_shift = shift;
        i += match_len;
        literal_start = i;
    }
    if literal_total + (len - literal_start) > LITERALS_MAX {
        return None;
    }
    Some(sequences)
}

/// Where a match at `at` with `shift` reads the base (`best_match` checked it is in the base).
fn base_at(at: usize, shift: isize) -> usize {
    (at as isize + shift) as usize
}

/// The longest match of at least `MATCH_MIN` bytes at `at` (`at + MATCH_MIN <= page.len()`)
/// in place, at `last_shift` and at the other shifts: (length, shift). A candidate is rejected
/// on its first eight bytes, so a position that matches nothing costs a few instructions per
/// shift.
fn best_match(page: &[u8], base: &[u8], at: usize, last_shift: isize) -> Option<(usize, isize)> {
    let head = word(page, at);
    let mut best: Option<(usize, isize)> = None;
    let mut try_shift = |shift: isize| {
        let from = at as isize + shift;
        if from < 0 || from as usize + MATCH_MIN > base.len() || word(base, from as usize) != head {
            return false;
        }
        let from = from as usize;
        let n = MATCH_MIN + common_prefix(&page[at + MATCH_MIN..], &base[from + MATCH_MIN..]);
        if best.is_none_or(|(b, _)| n > b) {
            best = Some((n, shift));
        }
        n >= 64 // long enough: probing further costs more than a better match saves
    };
    if try_shift(0) || (last_shift != 0 && try_shift(last_shift)) {
        return best;
    }
    for shift in SHIFTS {
        if try_shift(shift) {
            break;
        }
    }
    best
}

/// How many bytes the two slices have in common at their end.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .rev()
        .zip(b.iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// The eight bytes at `at` (the caller checked that there are eight).
fn word(bytes: &[u8], at: usize) -> u64 {
    bytes[at..at + 8].try_into().map_or(0, u64::from_le_bytes)
}

/// How many bytes the two slices have in common from their start.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut k = 0;
    while k + 8 <= n {
        let (x, y) = (word(a, k), word(b, k));
        if x != y {
            return k + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        k += 8;
    }
    k + a[k..n]
        .iter()
        .zip(&b[k..n])
        .take_while(|(x, y)| x == y)
        .count()
}

/// zstd's frame magic number, little-endian.
const FRAME_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// One frame of one compressed block: raw literals, the sequences coded with the predefined
/// distributions.
fn write_frame(page: &[u8], sequences: &[Sequence], out: &mut Vec<u8>) {
    let len = page.len();
    // Frame header: the content size on two bytes (stored as size - 256), single segment (no
    // window descriptor: the window is the content), no checksum, no dictionary id.
    out.extend_from_slice(&FRAME_MAGIC);
    out.push(0b0110_0000);
    out.extend_from_slice(&((len - 256) as u16).to_le_bytes());
    let block_header_at = out.len();
    out.extend_from_slice(&[0; 3]);
    let block_start = out.len();

    // Literals section: every byte not copied from the base, in order, stored raw (copied from
    // the page straight into the frame).
    let end = sequences.last().map_or(0, |s| s.at + s.match_len);
    let n = sequences.iter().map(|s| s.literals).sum::<usize>() + (len - end);
    const _: () = assert!(LITERALS_MAX < 4096, "literal sizes need the 3-byte header");
    if n < 32 {
        out.push((n as u8) << 3);
    } else {
        out.extend_from_slice(&(((n as u16) << 4) | 0b0100).to_le_bytes());
    }
    for s in sequences {
        out.extend_from_slice(&page[s.at - s.literals..s.at]);
    }
    out.extend_from_slice(&page[end..]);

    // Sequences section: their number, then (if any) the modes byte (0: all three predefined)
    // and the bitstream.
    let count = sequences.len();
    if count < 128 {
        out.push(count as u8);
    } else {
        // At most 65,536 / MATCH_MIN sequences, far below 0x7F00 (the three-byte form).
        out.push(((count >> 8) as u8) + 0x80);
        out.push(count as u8);
    }
    if count > 0 {
        out.push(0);
        write_sequences(len, sequences, out);
    }

    // Block header: last block, compressed (type 2), its size.
    let block_len = (out.len() - block_start) as u32;
    let header = 1 | (2 << 1) | (block_len << 3);
    out[block_header_at..block_header_at + 3].copy_from_slice(&header.to_le_bytes()[..3]);
}

/// The codes of one sequence and their extra bits.
struct Coded {
    ll: (u8, u32, u32),
    ml: (u8, u32, u32),
    of: (u8, u32, u32),
}

/// Codes a sequence; `rep1` is the decoder's most recent offset before it, updated here.
fn code(len: usize, s: &Sequence, rep1: &mut u32) -> Coded {
    let ll = s.literals as u32;
    let ml = s.match_len as u32;
    // The match reads the base at `at + shift`; in zstd's terms the base precedes the page, so
    // the distance back is len - shift.
    let offset = (len as isize - s.shift) as u32;
    // Offset value 1 repeats the most recent offset when literals precede the match (with none,
    // 1 to 3 mean other things: a real offset is written then). Values above 3 are offsets + 3
    // and become the most recent offset. Frames start with 1 as the most recent offset, which
    // no match into the base has.
    let offset_value = if ll > 0 && offset == *rep1 {
        1
    } else {
        *rep1 = offset;
        offset + 3
    };
    let of_code = 31 - offset_value.leading_zeros();
    Coded {
        ll: by_baseline(ll, &LL_BASELINES, &LL_BITS),
        ml: by_baseline(ml, &ML_BASELINES, &ML_BITS),
        of: (of_code as u8, offset_value - (1 << of_code), of_code),
    }
}

/// The code whose baseline is the largest not above `value`: (code, extra bits value, bits).
fn by_baseline(value: u32, baselines: &[u32], bits: &[u8]) -> (u8, u32, u32) {
    let c = baselines.partition_point(|&b| b <= value) - 1;
    (c as u8, value - baselines[c], bits[c] as u32)
}

/// The FSE bitstream of the sequences, coded with the predefined tables. The decoder reads it
/// backwards from its end, so it is written from the last sequence to the first (RFC 8878,
/// "Sequence Execution" and "FSE"): for the last sequence only its extra bits; before each
/// earlier one, the state transitions that lead to the next sequence's states; finally the
/// initial states.
fn write_sequences(len: usize, sequences: &[Sequence], out: &mut Vec<u8>) {
    let tables = tables();
    let mut rep1 = 1;
    let coded: Vec<Coded> = sequences.iter().map(|s| code(len, s, &mut rep1)).collect();
    let mut bits = BitWriter::new(out);
    let last = &coded[coded.len() - 1];
    let mut ll_state = tables.ll.first_state(last.ll.0);
    let mut ml_state = tables.ml.first_state(last.ml.0);
    let mut of_state = tables.of.first_state(last.of.0);
    let extras = |bits: &mut BitWriter<'_>, c: &Coded| {
        bits.add(c.ll.1, c.ll.2);
        bits.add(c.ml.1, c.ml.2);
        bits.add(c.of.1, c.of.2);
    };
    extras(&mut bits, last);
    for c in coded.iter().rev().skip(1) {
        of_state = tables.of.encode(&mut bits, of_state, c.of.0);
        ml_state = tables.ml.encode(&mut bits, ml_state, c.ml.0);
        ll_state = tables.ll.encode(&mut bits, ll_state, c.ll.0);
        extras(&mut bits, c);
    }
    bits.add(ml_state, tables.ml.log);
    bits.add(of_state, tables.of.log);
    bits.add(ll_state, tables.ll.log);
    bits.close();
}

/// Bits appended from the lowest up, bytes little-endian; closed by a 1 bit, from which a
/// decoder finds where the stream ends.
struct BitWriter<'a> {
    out: &'a mut Vec<u8>,
    acc: u64,
    used: u32,
}

impl<'a> BitWriter<'a> {
    fn new(out: &'a mut Vec<u8>) -> Self {
        Self {
            out,
            acc: 0,
            used: 0,
        }
    }

    /// Appends the low `n` (at most 32) bits of `value`.
    fn add(&mut self, value: u32, n: u32) {
        let masked = u64::from(value) & ((1u64 << n) - 1);
        self.acc |= masked << self.used;
        self.used += n;
        while self.used >= 8 {
            self.out.push(self.acc as u8);
            self.acc >>= 8;
            self.used -= 8;
        }
    }

    fn close(mut self) {
        self.add(1, 1);
        if self.used > 0 {
            self.out.push(self.acc as u8);
        }
    }
}

/// One predefined FSE distribution, arranged for encoding: for every symbol, the decoder states
/// that decode it, in increasing order.
struct FseTable {
    log: u32,
    /// `states[s]`: the states whose symbol is `s`.
    states: Vec<Vec<u32>>,
}

impl FseTable {
    /// Builds the decoding table of RFC 8878 ("FSE Table Description"): symbols of probability
    /// "less than 1" (-1) take one cell each from the top, the others are spread with the step
    /// `size/2 + size/8 + 3`, skipping those cells.
    fn new(norm: &[i16], log: u32) -> Self {
        let size = 1usize << log;
        let mut symbol_at = vec![0u8; size];
        let mut high = size - 1;
        for (s, &p) in norm.iter().enumerate() {
            if p == -1 {
                symbol_at[high] = s as u8;
                high -= 1;
            }
        }
        let step = (size >> 1) + (size >> 3) + 3;
        let mut pos = 0;
        for (s, &p) in norm.iter().enumerate() {
            for _ in 0..p.max(0) {
                symbol_at[pos] = s as u8;
                pos = (pos + step) & (size - 1);
                while pos > high {
                    pos = (pos + step) & (size - 1);
                }
            }
        }
        let mut states = vec![Vec::new(); norm.len()];
        for (state, &s) in symbol_at.iter().enumerate() {
            states[s as usize].push(state as u32);
        }
        Self { log, states }
    }

    /// A state that decodes `symbol`: the state of the last sequence, which no transition
    /// follows.
    fn first_state(&self, symbol: u8) -> u32 {
        self.states[symbol as usize][0]
    }

    /// Writes the bits that take a decoder from a state of `symbol` to `next`, and returns that
    /// state of `symbol`. The k-th state of a symbol with c states reads nb bits and goes to
    /// ((c + k) << nb) - size + bits, where nb makes (c + k) << nb fall in [size, 2 size): so
    /// for `next`, k and nb follow from next + size shifted right into [c, 2c).
    fn encode(&self, bits: &mut BitWriter<'_>, next: u32, symbol: u8) -> u32 {
        let states = &self.states[symbol as usize];
        let c = states.len() as u32;
        let y = next + (1 << self.log);
        let mut nb = 0;
        while (y >> nb) >= 2 * c {
            nb += 1;
        }
        bits.add(y, nb);
        states[((y >> nb) - c) as usize]
    }
}

struct Tables {
    ll: FseTable,
    ml: FseTable,
    of: FseTable,
}

fn tables() -> &'static Tables {
    static TABLES: std::sync::OnceLock<Tables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| Tables {
        ll: FseTable::new(&LL_NORM, 6),
        ml: FseTable::new(&ML_NORM, 6),
        of: FseTable::new(&OF_NORM, 5),
    })
}

// The predefined distributions and code tables of RFC 8878 ("Default Distributions",
// "Literals_Length_Codes", "Match_Length_Codes").

const LL_NORM: [i16; 36] = [
    4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1, 1,
    -1, -1, -1, -1,
];
const ML_NORM: [i16; 53] = [
    1, 4, 3, 2, 2, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1, -1, -1,
];
const OF_NORM: [i16; 29] = [
    1, 1, 1, 1, 1, 1, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1, -1, -1, -1, -1,
];
const LL_BASELINES: [u32; 36] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18, 20, 22, 24, 28, 32, 40, 48, 64,
    128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536,
];
const LL_BITS: [u8; 36] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 3, 4, 6, 7, 8, 9, 10, 11,
    12, 13, 14, 15, 16,
];
const ML_BASELINES: [u32; 53] = [
    3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27,
    28, 29, 30, 31, 32, 33, 34, 35, 37, 39, 41, 43, 47, 51, 59, 67, 83, 99, 131, 259, 515, 1027,
    2051, 4099, 8195, 16387, 32771, 65539,
];
const ML_BITS: [u8; 53] = [
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    1, 1, 1, 1, 2, 2, 3, 3, 4, 4, 5, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use zstd_safe::DCtx;

    fn decode(frame: &[u8], base: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; base.len()];
        let n = DCtx::create()
            .decompress_using_dict(&mut out[..], frame, base)
            .unwrap_or_else(|e| {
                panic!(
                    "libzstd refused the frame: {}",
                    zstd_safe::get_error_name(e)
                )
            });
        out.truncate(n);
        out
    }

    fn round_trip(page: &[u8], base: &[u8]) -> Option<usize> {
        let mut out = vec![0xAA]; // appends after what is there
        let n = encode(page, base, &mut out)?;
        assert_eq!(out.len(), n + 1);
        assert_eq!(
            zstd_safe::get_frame_content_size(&out[1..]).ok(),
            Some(Some(page.len() as u64))
        );
        assert_eq!(decode(&out[1..], base), page);
        Some(n)
    }

    fn noise(seed: u64, n: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn a_page_equal_to_its_base_is_one_match() {
        for len in [512, 1024, 4096, 65536] {
            let base = noise(len as u64, len);
            let n = round_trip(&base, &base).expect("equal pages are encoded");
            assert!(n <= 20, "{len}: {n} bytes");
        }
    }

    #[test]
    fn an_inserted_cell_pointer_and_a_new_cell_cost_about_their_size() {
        let base = noise(7, 4096);
        let mut page = base.clone();
        // Two bytes inserted at 300 shift the next 400 bytes of the "pointer array" right.
        page.copy_within(300..700, 302);
        page[300..302].copy_from_slice(&[0x0f, 0x42]);
        // A new 60-byte cell in the free space, a changed header counter.
        page[2000..2060].copy_from_slice(&noise(8, 60));
        page[3] ^= 0x55;
        let n = round_trip(&page, &base).expect("a small change is encoded");
        assert!(n < 63 + 48, "{n} bytes for 63 bytes of literals");
    }

    #[test]
    fn a_base_a_decoder_would_read_as_a_dictionary_is_refused() {
        let mut base = noise(3, 4096);
        base[..4].copy_from_slice(&ZSTD_DICT_MAGIC);
        let mut out = Vec::new();
        assert_eq!(encode(&base.clone(), &base, &mut out), None);
        assert!(out.is_empty());
    }

    #[test]
    fn a_page_unlike_its_base_is_left_to_libzstd() {
        let base = noise(1, 4096);
        let page = noise(2, 4096);
        assert_eq!(round_trip(&page, &base), None);
        let mut out = Vec::new();
        assert_eq!(
            encode(&page, &base[..2048], &mut out),
            None,
            "lengths differ"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn long_literal_runs_and_many_sequences_use_the_wider_headers() {
        // 64 KiB page: a 300-byte literal run (two-byte literal header) and more than 127
        // sequences (two-byte sequence count).
        let base = noise(3, 65536);
        let mut page = base.clone();
        page[100..400].copy_from_slice(&noise(4, 300));
        for k in 0..150 {
            page[2000 + k * 200] ^= 0xff;
        }
        round_trip(&page, &base).expect("encoded");
        // Almost all literals below the limit in a small page: a one-byte literal header is
        // too small, and literals at the very end with no match after them.
        let base = noise(5, 512);
        let mut page = base.clone();
        page[480..].copy_from_slice(&noise(6, 32));
        round_trip(&page, &base).expect("encoded");
    }

    fn edit() -> impl Strategy<Value = (u8, usize, usize, u8)> {
        (0u8..4, 0usize..65536, 1usize..64, any::<u8>())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]
        #[test]
        fn every_frame_decodes_to_the_page(
            size_log in 9u32..=16,
            seed in any::<u64>(),
            low_entropy in any::<bool>(),
            edits in proptest::collection::vec(edit(), 0..40),
        ) {
            let len = 1usize << size_log;
            let mut base = noise(seed, len);
            if low_entropy {
                base.iter_mut().for_each(|b| *b &= 0x03);
            }
            let mut page = base.clone();
            for (kind, at, n, v) in edits {
                let at = at % len;
                let n = n.min(len - at);
                match kind {
                    0 => page[at..at + n].fill(v),                       // overwrite
                    1 => page.copy_within(at..len - n, at + n),          // shift right
                    2 => page.copy_within(at + n..len, at),              // shift left
                    _ => page[at] = v,                                    // one byte
                }
            }
            if let Some(n) = round_trip(&page, &base) {
                prop_assert!(n < len);
            }
        }
    }
}
