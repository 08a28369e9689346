//! One worker's view of one source: files → records → pieces → tokens → rows, with a position
//! that can be saved after any row and restored exactly.

use std::ops::Range;
use std::sync::Arc;

use crate::config::{LossOn, Mode};
use crate::error::{Error, Result};
use crate::hold_back::HoldBack;
use crate::piece::{corenet_next_start, corenet_piece_end, normalized_len, packed_piece_end};
use crate::pipeline::Pipeline;
use crate::read::{self, OpenSpec, Position, ReadItem, RecordReader, Stride};
use crate::remote;
use crate::shard::Shard;
use crate::source::ShardFile;
use crate::state::SourceState;
use crate::stats::SourceStats;
use crate::template::Rendered;
use crate::text_fix::fix_text;

/// The document being consumed.
struct OpenDoc {
    text: String,
    /// Byte ranges of `text` left out of the loss (none unless the source has
    /// `loss_on: response`).
    hidden: Vec<Range<usize>>,
    /// Pairs mode: the rejected answer's text and prompt ranges (`text` is the chosen one).
    rejected: Option<Rendered>,
    end: Position,
    piece: Option<Piece>,
}

/// The tokens of the current piece of the document.
struct Piece {
    next_start: usize,
    /// This piece reaches the end of the document. Not the same as `next_start` reaching it:
    /// in CoreNet mode a piece ending at a trailing space is followed by an empty piece, as
    /// Python's `split(" ")` gives a last empty word there.
    last: bool,
    tokens: Vec<u32>,
    /// Ranges of `tokens` that are prompt and never targets.
    hidden: Vec<Range<usize>>,
}

/// Row producer for one (source, worker).
pub struct SourceStream {
    index: usize,
    shard: Shard,
    pipe: Arc<Pipeline>,
    pub state: SourceState,
    pub stats: crate::stats::SourceStats,
    plan: Option<Vec<(usize, Stride)>>,
    reader: Option<Box<dyn RecordReader>>,
    doc: Option<OpenDoc>,
}

impl SourceStream {
    /// A stream positioned at `state` (the default state is the very beginning).
    pub fn new(
        index: usize,
        shard: Shard,
        pipe: Arc<Pipeline>,
        state: SourceState,
        stats: SourceStats,
    ) -> Self {
        SourceStream {
            index,
            shard,
            pipe,
            state,
            stats,
            plan: None,
            reader: None,
            doc: None,
        }
    }

    /// Appends one row of `seq_len + 1` ids to `out`, and to `prompt` whether each id is a
    /// prompt token (never a target).
    pub fn next_row(&mut self, out: &mut Vec<u32>, prompt: &mut Vec<bool>) -> Result<()> {
        let need = self.pipe.row_len();
        match self.pipe.config.mode {
            Mode::Packed => self.packed_row(out, prompt, need)?,
            Mode::Corenet | Mode::Pairs => self.corenet_row(out, prompt, need)?,
        }
        self.stats.rows += 1;
        self.settle();
        Ok(())
    }

    /// Fills a row from consecutive pieces; the rest of the last piece waits for the next row.
    fn packed_row(
        &mut self,
        out: &mut Vec<u32>,
        prompt: &mut Vec<bool>,
        need: usize,
    ) -> Result<()> {
        let mut got = 0;
        while got < need {
            self.advance()?;
            let off = self.state.token_offset as usize;
            let (tokens, hidden) = self.current_tokens();
            let take = (need - got).min(tokens.len() - off);
            out.extend_from_slice(&tokens[off..off + take]);
            let n = push_hidden(prompt, hidden, off..off + take);
            self.stats.prompt_tokens += n as u64;
            self.state.token_offset += take as u64;
            got += take;
        }
        self.stats.tokens += need as u64;
        Ok(())
    }

    /// One piece per row: truncated, or right-padded with the pad id (CoreNet).
    fn corenet_row(
        &mut self,
        out: &mut Vec<u32>,
        prompt: &mut Vec<bool>,
        need: usize,
    ) -> Result<()> {
        let pad = self.pipe.tokenizer.pad_id();
        self.advance()?;
        let (tokens, hidden) = self.current_tokens();
        let (len, n) = (tokens.len(), tokens.len().min(need));
        out.extend_from_slice(&tokens[..n]);
        out.resize(out.len() + need - n, pad);
        let hidden_n = push_hidden(prompt, hidden, 0..n);
        prompt.resize(prompt.len() + need - n, false);
        self.stats.prompt_tokens += hidden_n as u64;
        self.state.token_offset = len as u64;
        self.stats.tokens += n as u64;
        self.stats.pad_tokens += (need - n) as u64;
        Ok(())
    }

    /// Makes sure a piece with unconsumed tokens is loaded and returns its tokens.
    fn advance(&mut self) -> Result<()> {
        loop {
            self.settle();
            match &self.doc {
                Some(doc) if doc.piece.is_some() => break,
                Some(_) => {
                    let piece = self.make_piece()?;
                    if let Some(doc) = self.doc.as_mut() {
                        doc.piece = Some(piece);
                    }
                }
                None => self.open_next_doc()?,
            }
        }
        Ok(())
    }

    /// Tokens of the loaded piece and its prompt ranges (empty when none is loaded).
    fn current_tokens(&self) -> (&[u32], &[Range<usize>]) {
        self.doc
            .as_ref()
            .and_then(|d| d.piece.as_ref())
            .map_or((&[], &[]), |p| (p.tokens.as_slice(), p.hidden.as_slice()))
    }

    /// Book-keeping without reading: closes an exhausted piece and a finished document, so a
    /// saved state never points at data that is already consumed. An open document without a
    /// loaded piece always has one left to make (at `piece_start`, possibly empty), so a saved
    /// state inside a document means "the piece at `piece_start` comes next".
    fn settle(&mut self) {
        let Some(doc) = self.doc.as_mut() else { return };
        let Some(p) = &doc.piece else { return };
        if (self.state.token_offset as usize) < p.tokens.len() {
            return;
        }
        self.state.token_offset = 0;
        if p.last {
            self.state.record = Some(doc.end);
            self.state.piece_start = 0;
            self.doc = None;
            self.stats.documents += 1;
        } else {
            self.state.piece_start = p.next_start as u64;
            doc.piece = None;
        }
    }

    /// Tokenizes the piece of the current document starting at `state.piece_start`.
    /// Pieces that CoreNet would drop come back empty and are counted.
    fn make_piece(&mut self) -> Result<Piece> {
        let Some(doc) = self.doc.as_ref() else {
            return Err(Error::Config("internal: no document".into()));
        };
        let (text, start) = (doc.text.as_str(), self.state.piece_start as usize);
        let hidden = &doc.hidden;
        let start = start.min(text.len());
        let tok = &self.pipe.tokenizer;
        let cfg = &self.pipe.config;
        let piece = match cfg.mode {
            Mode::Packed => {
                let end = packed_piece_end(text, start, cfg.max_piece_bytes);
                let mut tokens = Vec::with_capacity(end - start + 2);
                if start == 0 {
                    tokens.push(tok.bos_id());
                }
                tokens.extend(tok.encode(&text[start..end])?);
                if end == text.len() {
                    tokens.push(tok.eos_id());
                }
                let piece = (text, start, end);
                let hidden = self.hidden_tokens(piece, hidden, start == 0, str::to_string)?;
                Piece {
                    next_start: end,
                    last: end == text.len(),
                    hidden: clamp_ranges(hidden, tokens.len()),
                    tokens,
                }
            }
            Mode::Corenet => {
                let end = corenet_piece_end(text, start, cfg.corenet.document_split_size);
                let next_start = corenet_next_start(text, end);
                let raw = &text[start..end];
                let min_chars = cfg.corenet.min_characters;
                let mut tokens = Vec::new();
                let fix = |t: &str| match cfg.corenet.fix_text {
                    true => fix_text(t),
                    false => t.to_string(),
                };
                let mut hidden_tokens = Vec::new();
                if normalized_len(raw, min_chars) >= min_chars {
                    let clean = fix(raw);
                    tokens.push(tok.bos_id());
                    tokens.extend(tok.encode(&clean)?);
                    tokens.push(tok.eos_id());
                    if tokens.len() < cfg.corenet.min_tokens {
                        tokens.clear();
                    }
                    // Every CoreNet piece begins with BOS.
                    hidden_tokens = self.hidden_tokens((text, start, end), hidden, true, fix)?;
                }
                Piece {
                    next_start,
                    last: end == text.len(),
                    hidden: clamp_ranges(hidden_tokens, tokens.len()),
                    tokens,
                }
            }
            Mode::Pairs => {
                // Piece 0 is the chosen answer, piece 1 the rejected one.
                let (text, hidden) = match (start, &doc.rejected) {
                    (0, _) | (_, None) => (text, hidden.as_slice()),
                    (_, Some((text, hidden))) => (text.as_str(), hidden.as_slice()),
                };
                let mut tokens = vec![tok.bos_id()];
                tokens.extend(tok.encode(text)?);
                let whole = (text, 0, text.len());
                let hidden = self.hidden_tokens(whole, hidden, true, str::to_string)?;
                Piece {
                    next_start: 1,
                    last: start == 1,
                    hidden: clamp_ranges(hidden, tokens.len()),
                    tokens,
                }
            }
        };
        if piece.tokens.is_empty() {
            self.stats.dropped_pieces += 1;
        } else {
            self.state.progressed = true;
        }
        Ok(piece)
    }

    /// The token ranges of the piece `text[start..end]` (BOS first when `bos`) that the byte
    /// ranges `hidden` cover. A range's ends are counted as the tokens of the piece's text
    /// before them, tokenized on their own, as LLM-Adapters counts `len(tokenize(user_prompt))`
    /// for `train_on_inputs=False`; BOS is hidden when the piece's first byte is.
    fn hidden_tokens(
        &self,
        (text, start, end): (&str, usize, usize),
        hidden: &[Range<usize>],
        bos: bool,
        prepare: impl Fn(&str) -> String,
    ) -> Result<Vec<Range<usize>>> {
        let count = |to: usize| -> Result<usize> {
            match to > start {
                true => Ok(self
                    .pipe
                    .tokenizer
                    .encode(&prepare(&text[start..to]))?
                    .len()),
                false => Ok(0),
            }
        };
        let shift = usize::from(bos);
        let mut out = Vec::new();
        for r in hidden.iter().filter(|r| r.start < end && r.end > start) {
            let (a, b) = (r.start.max(start), r.end.min(end));
            let lo = if a == start { 0 } else { shift + count(a)? };
            out.push(lo..shift + count(b)?);
        }
        Ok(out)
    }

    /// Reads records until the next usable document, crossing files and epochs.
    fn open_next_doc(&mut self) -> Result<()> {
        loop {
            if self.reader.is_none() && !self.open_reader()? {
                continue;
            }
            let Some(reader) = self.reader.as_mut() else {
                continue;
            };
            match reader.next_item() {
                Err(e) => self.skip_file(e)?,
                Ok(None) => self.next_file(),
                Ok(Some(ReadItem::Bad(e))) => self.skip_record(e)?,
                Ok(Some(ReadItem::Doc(rec))) if self.is_held_back(rec.start) => {
                    self.state.record = Some(rec.end);
                    self.stats.held_back += 1;
                }
                Ok(Some(ReadItem::Doc(rec))) => {
                    // Packed mode has no use for an empty document (it would only add BOS and
                    // EOS). CoreNet mode keeps it: it is one empty piece, which CoreNet turns
                    // into a row of BOS, EOS and padding unless the filters drop it.
                    if rec.text.is_empty() && self.pipe.config.mode == Mode::Packed {
                        self.state.record = Some(rec.end);
                        self.stats.dropped_pieces += 1;
                        self.stats.documents += 1;
                        continue;
                    }
                    if self.pipe.config.mode == Mode::Pairs && !self.pair_fits(&rec)? {
                        self.state.record = Some(rec.end);
                        continue;
                    }
                    self.state.record = Some(rec.start);
                    let masks = self.pipe.sources[self.index].loss_on == LossOn::Response;
                    self.doc = Some(OpenDoc {
                        hidden: if masks { rec.hidden } else { Vec::new() },
                        rejected: rec.rejected,
                        text: rec.text,
                        end: rec.end,
                        piece: None,
                    });
                    return Ok(());
                }
            }
        }
    }

    /// Whether a pair's prompt (BOS + the text before its answer) is within `max_prompt_tokens`
    /// and leaves the row room for an answer; one that is not is counted and logged by file
    /// and position.
    fn pair_fits(&mut self, rec: &read::Record) -> Result<bool> {
        let prompt_end = rec
            .hidden
            .first()
            .filter(|r| r.start == 0)
            .map_or(0, |r| r.end);
        let prompt = 1 + self.pipe.tokenizer.encode(&rec.text[..prompt_end])?.len();
        let limit = self.pipe.row_len() - 1;
        let limit = self
            .pipe
            .config
            .max_prompt_tokens
            .map_or(limit, |m| m.min(limit));
        if prompt <= limit {
            return Ok(true);
        }
        let file = self.current_file().map(|f| f.path.clone());
        tracing::warn!(source = %self.pipe.sources[self.index].name, file = ?file, position = %rec.start, prompt_tokens = prompt, limit, "skipping a preference pair whose prompt is too long");
        self.stats.long_prompts += 1;
        Ok(false)
    }

    /// Opens the current file of the plan at the saved record; false when it had to move on
    /// (next epoch, or an unreadable file skipped).
    fn open_reader(&mut self) -> Result<bool> {
        let pipe = Arc::clone(&self.pipe);
        let source = &pipe.sources[self.index];
        let (seed, index, epoch) = (pipe.config.seed, self.index, self.state.epoch);
        let plan = self
            .plan
            .get_or_insert_with(|| self_plan(&self.shard, source.files.len(), seed, index, epoch));
        let Some(&(file, stride)) = plan.get(self.state.file as usize) else {
            self.next_epoch()?;
            return Ok(false);
        };
        let shard_file = &source.files[file];
        let spec = OpenSpec {
            path: &shard_file.path,
            format: shard_file.format,
            text_key: &source.text_key,
            template: source.template,
            stride,
            max_record_bytes: pipe.config.max_record_bytes,
            storage: &pipe.config.storage,
        };
        let at = self
            .state
            .record
            .unwrap_or(Position::start(shard_file.format));
        match read::open(&spec, at) {
            Ok(reader) => {
                self.reader = Some(reader);
                self.warm_up_next(plan_next(self.plan.as_deref(), self.state.file));
                Ok(true)
            }
            Err(e) => {
                self.skip_file(e)?;
                Ok(false)
            }
        }
    }

    /// Starts opening the plan's next file when it is on an object store (remote/).
    fn warm_up_next(&self, next: Option<usize>) {
        let Some(file) = next.and_then(|f| self.pipe.sources[self.index].files.get(f)) else {
            return;
        };
        if remote::is_url(&file.path) {
            remote::RemoteObject::warm_up(&file.path.to_string_lossy(), &self.pipe.config.storage);
        }
    }

    /// Whether the record at `start` of the file being read is kept for validation.
    fn is_held_back(&self, start: Position) -> bool {
        let source = &self.pipe.sources[self.index];
        let hold = HoldBack::new(source.hold_back);
        if hold.is_empty() {
            return false;
        }
        self.current_file()
            .is_some_and(|file| hold.holds(&file.path, start))
    }

    /// The file of the plan being read.
    fn current_file(&self) -> Option<&ShardFile> {
        let &(file, _) = self.plan.as_ref()?.get(self.state.file as usize)?;
        self.pipe.sources[self.index].files.get(file)
    }

    fn skip_record(&mut self, e: Error) -> Result<()> {
        if self.pipe.config.strict {
            return Err(e);
        }
        tracing::warn!(source = %self.pipe.sources[self.index].name, error = %e, "skipping bad record");
        self.stats.bad_records += 1;
        Ok(())
    }

    fn skip_file(&mut self, e: Error) -> Result<()> {
        if self.pipe.config.strict || !e.is_skippable() {
            return Err(e);
        }
        tracing::warn!(source = %self.pipe.sources[self.index].name, error = %e, "skipping rest of file");
        self.stats.bad_files += 1;
        self.next_file();
        Ok(())
    }

    fn next_file(&mut self) {
        self.state.file += 1;
        self.state.record = None;
        self.reader = None;
    }

    fn next_epoch(&mut self) -> Result<()> {
        if !self.state.progressed {
            return Err(Error::SourceExhausted {
                source_name: self.pipe.sources[self.index].name.clone(),
                rank: self.shard.rank,
                worker: self.shard.worker,
                epoch: self.state.epoch,
            });
        }
        tracing::info!(source = %self.pipe.sources[self.index].name, epoch = self.state.epoch, rank = self.shard.rank, worker = self.shard.worker, "source epoch done: its shards are read again, reshuffled");
        self.state = SourceState {
            epoch: self.state.epoch + 1,
            ..SourceState::default()
        };
        self.stats.epochs += 1;
        self.plan = None;
        Ok(())
    }
}

/// Appends one flag per token of `window` (true inside a `hidden` range); returns how many
/// are hidden.
fn push_hidden(flags: &mut Vec<bool>, hidden: &[Range<usize>], window: Range<usize>) -> usize {
    let before = flags.len();
    flags.extend(window.map(|k| hidden.iter().any(|r| r.contains(&k))));
    flags[before..].iter().filter(|&&h| h).count()
}

/// Ranges cut to a piece of `len` tokens, empty ones dropped.
fn clamp_ranges(ranges: Vec<Range<usize>>, len: usize) -> Vec<Range<usize>> {
    ranges
        .into_iter()
        .map(|r| r.start.min(len)..r.end.min(len))
        .filter(|r| !r.is_empty())
        .collect()
}

/// The file after plan entry `at`, if the plan has one.
fn plan_next(plan: Option<&[(usize, Stride)]>, at: u64) -> Option<usize> {
    plan?.get(at as usize + 1).map(|&(file, _)| file)
}

fn self_plan(
    shard: &Shard,
    n_files: usize,
    seed: u64,
    source: usize,
    epoch: u64,
) -> Vec<(usize, Stride)> {
    shard.epoch_plan(n_files, seed, source, epoch)
}
