//! The on-disk spool: records that could not reach the broker, kept in
//! order in append-only segment files until delivery is confirmed. Bounded
//! in bytes; a push past the bound is refused so the caller counts the drop.
//!
//! Layout: `<dir>/<first-record-number>.seg` segments, each a run of
//! records `key_len: u16 LE, key, payload_len: u32 LE, payload`; and
//! `<dir>/cursor`, the number of the first record not yet delivered,
//! replaced atomically after each acknowledgement. A torn record at the end
//! of the last segment (a crash mid-write) is cut off when the spool opens.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
};

/// Segments are rotated past this size.
const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;

/// One spooled record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Kafka key.
    pub key: Vec<u8>,
    /// Kafka payload.
    pub payload: Vec<u8>,
}

impl Record {
    fn encoded_len(&self) -> u64 {
        2 + self.key.len() as u64 + 4 + self.payload.len() as u64
    }
}

/// A segment file: the number of its first record, its path and size.
#[derive(Debug)]
struct Segment {
    first: u64,
    path: PathBuf,
    records: u64,
    bytes: u64,
}

/// The spool.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    max_bytes: u64,
    segments: Vec<Segment>,
    /// Number of the first undelivered record.
    cursor: u64,
    /// Number the next pushed record gets.
    next: u64,
    writer: Option<File>,
}

impl Spool {
    /// Opens (or creates) the spool in `dir`, keeping at most `max_bytes`.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        let cursor = match fs::read_to_string(dir.join("cursor")) {
            Ok(t) => t.trim().parse().unwrap_or(0),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
            Err(e) => return Err(e),
        };
        let mut firsts: Vec<u64> = fs::read_dir(dir)?
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let mut segments = Vec::new();
        for first in firsts {
            let path = dir.join(format!("{first:020}.seg"));
            let (records, valid_bytes) = scan(&path)?;
            let file = OpenOptions::new().write(true).open(&path)?;
            if file.metadata()?.len() != valid_bytes {
                file.set_len(valid_bytes)?; // cut a torn tail
            }
            segments.push(Segment {
                first,
                path,
                records,
                bytes: valid_bytes,
            });
        }
        let next = segments.last().map_or(cursor, |s| s.first + s.records);
        let mut spool = Self {
            dir: dir.to_path_buf(),
            max_bytes,
            segments,
            cursor: cursor.min(next),
            next,
            writer: None,
        };
        spool.drop_delivered_segments()?;
        Ok(spool)
    }

    /// Records waiting.
    pub fn len(&self) -> u64 {
        self.next - self.cursor
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes on disk.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    /// Appends a record; `Ok(false)` when the bound would be exceeded.
    pub fn push(&mut self, record: &Record) -> io::Result<bool> {
        let len = record.encoded_len();
        if self.bytes() + len > self.max_bytes {
            return Ok(false);
        }
        if self
            .segments
            .last()
            .is_none_or(|s| s.bytes >= SEGMENT_BYTES)
        {
            let path = self.dir.join(format!("{:020}.seg", self.next));
            File::create(&path)?;
            self.segments.push(Segment {
                first: self.next,
                path,
                records: 0,
                bytes: 0,
            });
            self.writer = None;
        }
        if self.writer.is_none() {
            let last = self.segments.last().expect("a segment was just ensured");
            self.writer = Some(OpenOptions::new().append(true).open(&last.path)?);
        }
        let mut buf = Vec::with_capacity(len as usize);
        buf.extend_from_slice(&(record.key.len() as u16).to_le_bytes());
        buf.extend_from_slice(&record.key);
        buf.extend_from_slice(&(record.payload.len() as u32).to_le_bytes());
        buf.extend_from_slice(&record.payload);
        self.writer
            .as_mut()
            .expect("writer opened above")
            .write_all(&buf)?;
        let last = self.segments.last_mut().expect("a segment exists");
        last.records += 1;
        last.bytes += len;
        self.next += 1;
        Ok(true)
    }

    /// Forces appended records to disk.
    pub fn sync(&mut self) -> io::Result<()> {
        match &mut self.writer {
            Some(w) => w.sync_data(),
            None => Ok(()),
        }
    }

    /// Up to `n` records from the cursor, in order, without removing them.
    pub fn peek(&self, n: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        let mut number = self.cursor;
        for segment in &self.segments {
            if out.len() >= n {
                break;
            }
            let end = segment.first + segment.records;
            if end <= number {
                continue;
            }
            let mut reader = BufReader::new(File::open(&segment.path)?);
            let mut index = segment.first;
            while index < end && out.len() < n {
                let record = read_record(&mut reader)?.ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "spool segment shorter than its index",
                    )
                })?;
                if index >= number {
                    out.push(record);
                    number += 1;
                }
                index += 1;
            }
        }
        Ok(out)
    }

    /// Marks the first `n` waiting records delivered.
    pub fn ack(&mut self, n: u64) -> io::Result<()> {
        self.cursor = (self.cursor + n).min(self.next);
        let tmp = self.dir.join("cursor.tmp");
        fs::write(&tmp, self.cursor.to_string())?;
        fs::rename(&tmp, self.dir.join("cursor"))?;
        self.drop_delivered_segments()
    }

    /// Removes segments whose every record is delivered.
    fn drop_delivered_segments(&mut self) -> io::Result<()> {
        while let Some(s) = self.segments.first() {
            if s.first + s.records > self.cursor {
                break;
            }
            fs::remove_file(&s.path)?;
            self.segments.remove(0);
            if self.segments.is_empty() {
                self.writer = None;
            }
        }
        Ok(())
    }
}

/// Reads one record; `None` at a clean or torn end.
fn read_record(reader: &mut impl Read) -> io::Result<Option<Record>> {
    let mut len2 = [0u8; 2];
    if !read_full(reader, &mut len2)? {
        return Ok(None);
    }
    let mut key = vec![0u8; u16::from_le_bytes(len2) as usize];
    let mut len4 = [0u8; 4];
    if !read_full(reader, &mut key)? || !read_full(reader, &mut len4)? {
        return Ok(None);
    }
    let mut payload = vec![0u8; u32::from_le_bytes(len4) as usize];
    if !read_full(reader, &mut payload)? {
        return Ok(None);
    }
    Ok(Some(Record { key, payload }))
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => return Ok(false),
            n => filled += n,
        }
    }
    Ok(true)
}

/// Records and bytes of the whole records in a segment file.
fn scan(path: &Path) -> io::Result<(u64, u64)> {
    let mut file = File::open(path)?;
    let size = file.seek(SeekFrom::End(0))?;
    file.seek(SeekFrom::Start(0))?;
    let mut reader = BufReader::new(file);
    let (mut records, mut bytes) = (0u64, 0u64);
    while let Some(r) = read_record(&mut reader)? {
        let len = r.encoded_len();
        if bytes + len > size {
            break;
        }
        records += 1;
        bytes += len;
    }
    Ok((records, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("headroom-spool-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn rec(i: u32) -> Record {
        Record {
            key: format!("svc-{}", i % 3).into_bytes(),
            payload: i.to_le_bytes().repeat(10),
        }
    }

    #[test]
    fn records_come_back_in_order_and_survive_reopening() {
        let d = dir("order");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        for i in 0..100 {
            assert!(s.push(&rec(i)).unwrap());
        }
        assert_eq!(s.peek(5).unwrap(), (0..5).map(rec).collect::<Vec<_>>());
        s.ack(30).unwrap();
        drop(s);
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.len(), 70);
        assert_eq!(s.peek(100).unwrap(), (30..100).map(rec).collect::<Vec<_>>());
        for i in 100..110 {
            s.push(&rec(i)).unwrap();
        }
        s.ack(80).unwrap();
        assert!(s.is_empty());
        assert!(s.peek(10).unwrap().is_empty());
        assert_eq!(s.bytes(), 0, "delivered segments are removed");
        s.push(&rec(110)).unwrap();
        assert_eq!(s.peek(10).unwrap(), vec![rec(110)]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_bound_refuses_pushes_and_acks_free_space() {
        let d = dir("bound");
        let one = rec(0).encoded_len();
        let mut s = Spool::open(&d, one * 10).unwrap();
        for i in 0..10 {
            assert!(s.push(&rec(i)).unwrap());
        }
        assert!(!s.push(&rec(10)).unwrap(), "past the bound");
        assert_eq!(s.len(), 10);
        s.ack(10).unwrap();
        assert!(
            s.push(&rec(10)).unwrap(),
            "delivered records free their space"
        );
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_torn_tail_is_cut_off_on_open() {
        let d = dir("torn");
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        for i in 0..5 {
            s.push(&rec(i)).unwrap();
        }
        s.sync().unwrap();
        let seg = s.segments[0].path.clone();
        drop(s);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[7, 0, b'p', b'a']).unwrap(); // half a record
        drop(f);
        let mut s = Spool::open(&d, 1 << 20).unwrap();
        assert_eq!(s.len(), 5);
        s.push(&rec(5)).unwrap();
        assert_eq!(s.peek(10).unwrap(), (0..6).map(rec).collect::<Vec<_>>());
        fs::remove_dir_all(&d).unwrap();
    }
}
