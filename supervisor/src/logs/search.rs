//! What a log `search` means (SPEC §7), on both sides: [`fts_query`] turns what the user typed
//! into the FTS5 query the index runs (bare words become prefix queries, so `crash` finds
//! `crashed`; quoted phrases stay exact words), and [`LiveSearch`] applies the same query to a
//! line in memory for the live stream (`ten logs -f --search`), which has no index.
//!
//! The rewrite keeps FTS5 syntax: `"phrases"`, `word*`, `AND`/`OR`/`NOT`, parentheses,
//! `NEAR(...)`, `^`, `+` and column filters pass through unchanged; only a bare word that is
//! not a keyword, not already a prefix, not a column name and not a `NEAR` distance gets a `*`.
//! Prefix queries were chosen over the trigram tokenizer by `benches/logstore.rs` (see
//! docs/operations.md, Logs): same index, same ingest rate.

/// FTS5's bareword characters (`sqlite3Fts5IsBareword`): ASCII letters and digits, `_`, 0x1A
/// and every non-ASCII character.
fn is_bareword(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '\x1a' || !c.is_ascii()
}

/// FTS5's query whitespace (`fts5ExprIsspace`).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// The end (byte index, past the closing quote) of the FTS5 string starting at `s[0] == '"'`
/// (`""` is an escaped quote); `s.len()` if it is not terminated.
fn string_end(s: &str) -> usize {
    let b = s.as_bytes();
    let mut i = 1;
    while i < b.len() {
        if b[i] == b'"' {
            if b.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

/// The FTS5 query for what the user typed: every bare word that the index tokenizes to at
/// least one token becomes a prefix query (`crash` → `crash*`); everything else is unchanged.
/// A malformed query stays malformed (the store answers `BadSearch`).
pub fn fts_query(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    let mut in_braces = false;
    // The last character that was neither whitespace nor part of a word or string.
    let mut last_punct: Option<char> = None;
    while let Some(c) = rest.chars().next() {
        if c == '"' {
            let end = string_end(rest);
            out.push_str(&rest[..end]);
            rest = &rest[end..];
            last_punct = None;
        } else if is_bareword(c) {
            let end = rest.find(|c| !is_bareword(c)).unwrap_or(rest.len());
            let word = &rest[..end];
            rest = &rest[end..];
            out.push_str(word);
            let next = rest.trim_start_matches(is_space).chars().next();
            let keep = matches!(word, "AND" | "OR" | "NOT")
                || in_braces
                || last_punct == Some(',')
                || matches!(next, Some('*' | ':' | '('))
                || !word.chars().any(char::is_alphanumeric);
            if !keep {
                out.push('*');
            }
            last_punct = None;
        } else {
            match c {
                '{' => in_braces = true,
                '}' => in_braces = false,
                _ => {}
            }
            if !is_space(c) {
                last_punct = Some(c);
            }
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// The index's tokens of `text`: runs of letters and digits, lowercased (close to FTS5's
/// `unicode61` tokenizer, which also folds diacritics).
fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// One phrase: consecutive tokens, each exact or a prefix (`true`); `initial` (`^`) when it
/// must start the line.
#[derive(Debug, Clone, PartialEq)]
struct Phrase {
    words: Vec<(String, bool)>,
    initial: bool,
}

impl Phrase {
    fn matches(&self, line: &[String]) -> bool {
        let n = self.words.len();
        if n == 0 || line.len() < n {
            return false;
        }
        let at = |i: usize| {
            self.words.iter().enumerate().all(|(k, (w, prefix))| {
                let t = &line[i + k];
                if *prefix {
                    t.starts_with(w.as_str())
                } else {
                    t == w
                }
            })
        };
        if self.initial {
            at(0)
        } else {
            (0..=line.len() - n).any(at)
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Expr {
    Phrase(Phrase),
    And(Box<Expr>, Box<Expr>),
    Or(Box<Expr>, Box<Expr>),
    Not(Box<Expr>, Box<Expr>),
}

impl Expr {
    fn eval(&self, line: &[String]) -> bool {
        match self {
            Expr::Phrase(p) => p.matches(line),
            Expr::And(a, b) => a.eval(line) && b.eval(line),
            Expr::Or(a, b) => a.eval(line) || b.eval(line),
            Expr::Not(a, b) => a.eval(line) && !b.eval(line),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Word(String),
    Str(String),
    And,
    Or,
    Not,
    Punct(char),
}

fn lex(q: &str) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut rest = q;
    while let Some(c) = rest.chars().next() {
        if is_space(c) {
            rest = &rest[1..];
        } else if c == '"' {
            let end = string_end(rest);
            if end < 2 || !rest[..end].ends_with('"') {
                return None;
            }
            out.push(Tok::Str(rest[1..end - 1].replace("\"\"", "\"")));
            rest = &rest[end..];
        } else if is_bareword(c) {
            let end = rest.find(|c| !is_bareword(c)).unwrap_or(rest.len());
            out.push(match &rest[..end] {
                "AND" => Tok::And,
                "OR" => Tok::Or,
                "NOT" => Tok::Not,
                w => Tok::Word(w.to_string()),
            });
            rest = &rest[end..];
        } else {
            out.push(Tok::Punct(c));
            rest = &rest[c.len_utf8()..];
        }
    }
    Some(out)
}

/// A recursive-descent parser for FTS5's query grammar, precedence from loosest: `OR`, `AND`,
/// `NOT`, then juxtaposed phrases (an implicit AND). Column filters are skipped (`logs_fts`
/// has one column); `NEAR(a b, n)` is read as `a AND b` (the live side has no positions
/// beyond the line, so it is a little more permissive).
struct Parser {
    toks: Vec<Tok>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn peek_at(&self, k: usize) -> Option<&Tok> {
        self.toks.get(self.at + k)
    }

    fn eat(&mut self, t: &Tok) -> bool {
        if self.peek() == Some(t) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Option<Expr> {
        let mut e = self.and()?;
        while self.eat(&Tok::Or) {
            e = Expr::Or(Box::new(e), Box::new(self.and()?));
        }
        Some(e)
    }

    fn and(&mut self) -> Option<Expr> {
        let mut e = self.not()?;
        while self.eat(&Tok::And) {
            e = Expr::And(Box::new(e), Box::new(self.not()?));
        }
        Some(e)
    }

    fn not(&mut self) -> Option<Expr> {
        let mut e = self.juxtaposed()?;
        while self.eat(&Tok::Not) {
            e = Expr::Not(Box::new(e), Box::new(self.juxtaposed()?));
        }
        Some(e)
    }

    /// Units side by side: an implicit AND, binding tighter than any operator.
    fn juxtaposed(&mut self) -> Option<Expr> {
        let mut e = self.unit()?;
        while matches!(
            self.peek(),
            Some(Tok::Word(_) | Tok::Str(_) | Tok::Punct('^' | '-' | '{' | '('))
        ) {
            e = Expr::And(Box::new(e), Box::new(self.unit()?));
        }
        Some(e)
    }

    /// `[colset :] ( query )` or `[colset :] nearset`.
    fn unit(&mut self) -> Option<Expr> {
        self.colset();
        if self.eat(&Tok::Punct('(')) {
            let e = self.or()?;
            return self.eat(&Tok::Punct(')')).then_some(e);
        }
        self.nearset()
    }

    /// Skips a column filter: `col :`, `- col :`, `{a b} :`, `- {a b} :`.
    fn colset(&mut self) {
        let start = self.at;
        self.eat(&Tok::Punct('-'));
        if self.eat(&Tok::Punct('{')) {
            while matches!(self.peek(), Some(Tok::Word(_))) {
                self.at += 1;
            }
            if self.eat(&Tok::Punct('}')) && self.eat(&Tok::Punct(':')) {
                return;
            }
        } else if matches!(self.peek(), Some(Tok::Word(_)))
            && self.peek_at(1) == Some(&Tok::Punct(':'))
        {
            self.at += 2;
            return;
        }
        self.at = start;
    }

    fn nearset(&mut self) -> Option<Expr> {
        if matches!(self.peek(), Some(Tok::Word(w)) if w == "NEAR")
            && self.peek_at(1) == Some(&Tok::Punct('('))
        {
            self.at += 2;
            let mut e = Expr::Phrase(self.phrase()?);
            while matches!(
                self.peek(),
                Some(Tok::Word(_) | Tok::Str(_) | Tok::Punct('^'))
            ) {
                e = Expr::And(Box::new(e), Box::new(Expr::Phrase(self.phrase()?)));
            }
            if self.eat(&Tok::Punct(',')) {
                self.at += 1; // the distance
            }
            return self.eat(&Tok::Punct(')')).then_some(e);
        }
        self.phrase().map(Expr::Phrase)
    }

    /// `[^] part [*] (+ part [*])*`, a part being a word or a string (a `*` makes the last
    /// token of its part a prefix).
    fn phrase(&mut self) -> Option<Phrase> {
        let initial = self.eat(&Tok::Punct('^'));
        let mut words: Vec<(String, bool)> = Vec::new();
        loop {
            match self.peek()? {
                Tok::Word(w) | Tok::Str(w) => {
                    words.extend(tokens(w).into_iter().map(|t| (t, false)))
                }
                _ => return None,
            }
            self.at += 1;
            if self.eat(&Tok::Punct('*')) {
                if let Some(last) = words.last_mut() {
                    last.1 = true;
                }
            }
            if !self.eat(&Tok::Punct('+')) {
                break;
            }
        }
        Some(Phrase { words, initial })
    }
}

/// A search for the live stream: the query [`fts_query`] would run, applied to one line.
#[derive(Debug, Clone)]
pub struct LiveSearch {
    expr: Option<Expr>,
    /// When the query did not parse here (the store rejects such a query first): every word
    /// as a prefix, all of them.
    words: Vec<String>,
}

impl LiveSearch {
    /// The search for `text` (what the user typed, as for the store).
    pub fn new(text: &str) -> Self {
        let query = fts_query(text);
        let expr = lex(&query).and_then(|toks| {
            let mut p = Parser { toks, at: 0 };
            let e = p.or()?;
            (p.at == p.toks.len()).then_some(e)
        });
        Self {
            expr,
            words: tokens(text),
        }
    }

    /// Whether `line` matches, as the index would find it (case-insensitive, by words; a bare
    /// word matches a word it starts).
    pub fn matches(&self, line: &str) -> bool {
        let line = tokens(line);
        match &self.expr {
            Some(e) => e.eval(&line),
            None => self
                .words
                .iter()
                .all(|w| line.iter().any(|t| t.starts_with(w.as_str()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_words_become_prefixes_and_the_rest_of_the_syntax_stays() {
        for (typed, fts) in [
            ("crash", "crash*"),
            ("crash*", "crash*"),
            ("timeout OR refused", "timeout* OR refused*"),
            ("GET NOT orders", "GET* NOT orders*"),
            ("a AND (b OR c)", "a* AND (b* OR c*)"),
            ("\"slow query\"", "\"slow query\""),
            ("\"say \"\"hi\"\"\" x", "\"say \"\"hi\"\"\" x*"),
            ("message:crash", "message:crash*"),
            ("message : crash", "message : crash*"),
            ("{message}: crash", "{message}: crash*"),
            ("- message : crash", "- message : crash*"),
            ("NEAR(a b, 10)", "NEAR(a* b*, 10)"),
            ("NEAR (a b)", "NEAR (a* b*)"),
            ("^crash", "^crash*"),
            ("a + b", "a* + b*"),
            ("user_id", "user_id*"),
            ("_", "_"),
            ("é", "é*"),
            ("\"unterminated", "\"unterminated"),
            ("user=alice", "user*=alice*"),
            ("", ""),
        ] {
            assert_eq!(fts_query(typed), fts, "{typed:?}");
        }
    }

    #[test]
    fn live_search_matches_as_the_index_does() {
        let cases: &[(&str, &str, bool)] = &[
            ("crash", "web:a crashed: exit status 1", true),
            ("crash", "crash loop: 2 restarts", true),
            ("crash", "no such thing", false),
            ("rash", "web:a crashed", false),
            ("CRASH", "Crashed", true),
            ("\"crash\"", "web:a crashed", false),
            ("\"crash\"", "a crash here", true),
            ("\"slow query\"", "warning: slow query 812ms", true),
            ("\"slow query\"", "query slow", false),
            ("timeout OR refused", "connection refused", true),
            ("timeout OR refused", "upstream timeouts", true),
            ("timeout OR refused", "all good", false),
            ("GET NOT orders", "GET /users 200", true),
            ("GET NOT orders", "GET /orders 500", false),
            ("GET orders", "GET /orders 500", true),
            ("GET orders", "GET /users 200", false),
            ("a OR b c", "b only", false),
            ("(a OR b) c", "b c", true),
            ("message:crash", "crashed", true),
            ("^job", "job 7 done", true),
            ("^done", "job 7 done", false),
            ("NEAR(job done, 5)", "job 7 done", true),
            ("user=alice", "user=alice", true), // not FTS5 syntax: every word
            ("user + alice", "GET user=alice", true),
            ("use + ali", "GET user=alice", true),
            ("\"use ali\"", "GET user=alice", false),
            ("\"user=alice\"", "GET user=alice", true),
        ];
        for (query, line, want) in cases {
            assert_eq!(
                LiveSearch::new(query).matches(line),
                *want,
                "{query:?} on {line:?} ({:?})",
                fts_query(query)
            );
        }
    }
}
