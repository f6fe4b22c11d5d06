package imap

// wire.go owns the bytes of the not-authenticated state: reading one command
// (tag, name, atoms, quoted strings, literals) under size caps, reading SASL
// response lines, and writing responses. Handlers never touch bufio.
//
// Grammar (RFC 9051 §9, reduced to what the pre-auth commands need):
//
//	command  = tag SP name *(SP arg) CRLF
//	arg      = atom / quoted / literal / "(" / ")"
//	quoted   = DQUOTE *(TEXT-CHAR except "\" and DQUOTE / "\" ("\" / DQUOTE)) DQUOTE
//	literal  = "{" number ["+"] "}" CRLF *OCTET   ; "+" is LITERAL+ (RFC 7888)
//
// A bare LF ends a line as well as CRLF (robustness, as most servers do).
// Runs of spaces are accepted where one is required.

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"

	"mailgate/gateway/internal/preauth"
)

// Size caps before authentication, so that a hostile client costs bounded
// memory whatever it sends. Every valid RFC 2971 ID fits (session.id's
// bounds: maxIDPairs pairs, keys of maxIDKeyLen and values of maxIDValueLen
// octets): the longest is one line of quoted strings in which every octet is
// escaped (maxQuotedID, about 62 KiB); the same ID as literals is shorter
// (each string costs its octets and a "{1024}" announcement, not twice its
// octets). Dovecot's IMAP compliance tester sends such an ID before login.
const (
	// maxQuotedID: `ID (` + pairs of `"key" "value"`, every octet escaped
	// ("\\" or "\""), with a space between pairs, and `)`.
	maxQuotedID = len("ID (") + maxIDPairs*(2+2*maxIDKeyLen+1+2+2*maxIDValueLen+1) + len(")")
	maxLine     = maxQuotedID + 1<<10 // one line, without literals; 1 KiB for the tag and spacing
	maxLiteral  = 8 << 10             // one literal
	maxCommand  = maxLine + 1<<10     // a whole command: lines and literals
)

// Fatal wire errors: the connection cannot be resynchronised.
var (
	errLineTooLong    = errors.New("imap: command line too long")
	errLiteralTooLong = errors.New("imap: non-synchronizing literal too large")
	// errHTTPRequest: the client's command is an HTTP request line (a
	// browser, or an ALPACA-style cross-protocol attack).
	errHTTPRequest = errors.New("imap: HTTP request on the IMAP port")
)

// syntaxError is a malformed command, answered with BAD; the session goes on.
// tag is empty when none could be read (the reply is then untagged).
// credentialLiteral is a synchronizing literal in LOGIN while credentials
// may not be sent (LOGINDISABLED): refused before the continuation request,
// so that the client is never invited to send its password in clear.
type credentialLiteral struct{ tag string }

func (e *credentialLiteral) Error() string { return "imap: LOGIN literal while LOGINDISABLED" }

type syntaxError struct {
	tag string
	msg string // constant text, safe to show the client
}

func (e *syntaxError) Error() string { return "imap: syntax error: " + e.msg }

type tokenKind uint8

const (
	tokAtom   tokenKind = iota // atom, also NIL and base64 blobs
	tokString                  // quoted string or literal, decoded
	tokOpen                    // "("
	tokClose                   // ")"
)

type token struct {
	kind tokenKind
	val  string
}

// str returns the value of an astring (RFC 9051 §9: atom, quoted or literal).
func (t token) str() (string, bool) {
	return t.val, t.kind == tokAtom || t.kind == tokString
}

// command is one parsed command.
type command struct {
	tag  string
	name string // upper case
	args []token
}

// wire reads commands and writes responses on one connection.
type wire struct {
	// noCredentials: LOGIN may not be sent now (LOGINDISABLED); its
	// synchronizing literals are refused without a continuation request.
	noCredentials bool

	br *bufio.Reader
	bw *bufio.Writer
}

func newWire(rw io.ReadWriter) *wire {
	return &wire{br: bufio.NewReaderSize(rw, 4096), bw: bufio.NewWriterSize(rw, 4096)}
}

// reset switches to a new transport (after the TLS handshake). Anything
// buffered is dropped; callers check buffered first.
func (w *wire) reset(rw io.ReadWriter) {
	w.br.Reset(rw)
	w.bw.Reset(rw)
}

// buffered is how many bytes the client sent that no command consumed yet.
func (w *wire) buffered() int { return w.br.Buffered() }

// takeBuffered returns a copy of the bytes read ahead (commands the client
// pipelined after its login, which belong to the backend).
func (w *wire) takeBuffered() []byte {
	n := w.br.Buffered()
	if n == 0 {
		return nil
	}
	b, _ := w.br.Peek(n) // n bytes are buffered: cannot fail
	b = bytes.Clone(b)
	w.br.Discard(n)
	return b
}

// readLine reads one line of at most maxLine octets without its line end.
func (w *wire) readLine() ([]byte, error) {
	var long []byte
	for {
		chunk, err := w.br.ReadSlice('\n')
		switch {
		case err == nil:
			if long != nil {
				chunk = append(long, chunk...)
			}
			if len(chunk) > maxLine+2 {
				return nil, errLineTooLong
			}
			chunk = chunk[:len(chunk)-1]
			return bytes.TrimSuffix(chunk, []byte("\r")), nil
		case err != bufio.ErrBufferFull:
			return nil, err
		case len(long)+len(chunk) > maxLine+2:
			return nil, errLineTooLong
		}
		long = append(long, chunk...)
	}
}

// readSASL reads one SASL response line (RFC 9051 §6.2.2): base64, or "*" to
// cancel.
func (w *wire) readSASL() (string, error) {
	line, err := w.readLine()
	return string(line), err
}

// readCommand reads and tokenises one command. For a synchronizing literal it
// sends the continuation request itself, and refuses one that is too large
// with a syntaxError before the client sends it (RFC 9051 §4.3; the client
// gives up the command). A too-large non-synchronizing literal is already on
// its way: that is fatal (RFC 7888 §4 lets the server close).
// Errors: *syntaxError (answer BAD, go on), errLineTooLong,
// errLiteralTooLong and I/O errors (end the session).
func (w *wire) readCommand() (*command, error) {
	var toks []token
	total := 0
	for {
		line, err := w.readLine()
		if err != nil {
			return nil, err
		}
		if toks == nil && preauth.IsHTTPRequest(line) {
			return nil, errHTTPRequest
		}
		total += len(line)
		var lit *literalSpec
		toks, lit, err = tokenize(line, toks)
		if err != nil {
			return nil, &syntaxError{tag: leadingTag(toks), msg: err.Error()}
		}
		if lit == nil {
			break
		}
		if lit.n > maxLiteral || total+lit.n > maxCommand {
			if lit.sync {
				return nil, &syntaxError{tag: leadingTag(toks), msg: "literal too large"}
			}
			return nil, errLiteralTooLong
		}
		// RFC 9051 §7.5: instead of the continuation request the server
		// may send the command's tagged completion, and the client then
		// MUST NOT send the literal. A LOGIN under LOGINDISABLED (§6.2.3)
		// is refused so, before the password is on the wire.
		if lit.sync && w.noCredentials && len(toks) >= 2 && toks[1].kind == tokAtom && strings.EqualFold(toks[1].val, "LOGIN") {
			return nil, &credentialLiteral{tag: leadingTag(toks)}
		}
		if lit.sync {
			w.continuation("Ready for literal data")
			if err := w.flush(); err != nil {
				return nil, err
			}
		}
		buf := make([]byte, lit.n)
		if _, err := io.ReadFull(w.br, buf); err != nil {
			return nil, err
		}
		total += lit.n
		toks = append(toks, token{kind: tokString, val: string(buf)})
	}
	return parseCommand(toks)
}

// leadingTag returns the tag of a partly read command, if it has a valid one.
func leadingTag(toks []token) string {
	if len(toks) > 0 && toks[0].kind == tokAtom && validTag(toks[0].val) {
		return toks[0].val
	}
	return ""
}

func parseCommand(toks []token) (*command, error) {
	if len(toks) == 0 {
		return nil, &syntaxError{msg: "empty command"}
	}
	tag := leadingTag(toks)
	if tag == "" {
		return nil, &syntaxError{msg: "invalid tag"}
	}
	if len(toks) < 2 || toks[1].kind != tokAtom {
		return nil, &syntaxError{tag: tag, msg: "missing command"}
	}
	return &command{tag: tag, name: strings.ToUpper(toks[1].val), args: toks[2:]}, nil
}

// validTag: 1*<any ASTRING-CHAR except "+"> (RFC 9051 §9).
func validTag(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; c == '+' || !isAtomChar(c) && c != ']' {
			return false
		}
	}
	return true
}

// isAtomChar: ATOM-CHAR = any CHAR except atom-specials (RFC 9051 §9).
func isAtomChar(c byte) bool {
	if c <= 0x20 || c >= 0x7f {
		return false
	}
	switch c {
	case '(', ')', '{', '%', '*', '"', '\\', ']':
		return false
	}
	return true
}

// literalSpec is a literal announced at the end of a line.
type literalSpec struct {
	n    int
	sync bool // {n}: wait for "+"; {n+}: LITERAL+, the data follows at once
}

// tokenize appends the tokens of one line to toks. A literal announcement
// must end the line; its octets follow and are read by the caller.
func tokenize(line []byte, toks []token) ([]token, *literalSpec, error) {
	for i := 0; i < len(line); {
		c := line[i]
		switch {
		case c == ' ':
			i++
		case c == '(':
			toks = append(toks, token{kind: tokOpen})
			i++
		case c == ')':
			toks = append(toks, token{kind: tokClose})
			i++
		case c == '"':
			s, n, err := unquote(line[i:])
			if err != nil {
				return toks, nil, err
			}
			toks = append(toks, token{kind: tokString, val: s})
			i += n
		case c == '{':
			end := bytes.IndexByte(line[i:], '}')
			if end < 0 || i+end != len(line)-1 {
				return toks, nil, errors.New("literal must end the line")
			}
			spec := string(line[i+1 : i+end])
			sync := !strings.HasSuffix(spec, "+")
			spec = strings.TrimSuffix(spec, "+")
			if spec == "" || len(spec) > 10 || strings.Trim(spec, "0123456789") != "" {
				return toks, nil, errors.New("invalid literal length")
			}
			n, err := strconv.Atoi(spec)
			if err != nil {
				return toks, nil, errors.New("invalid literal length")
			}
			return toks, &literalSpec{n: n, sync: sync}, nil
		default:
			j := i
			for j < len(line) && line[j] != ' ' && line[j] != '(' && line[j] != ')' && line[j] != '"' {
				if line[j] < 0x20 || line[j] == 0x7f {
					return toks, nil, errors.New("control character")
				}
				j++
			}
			toks = append(toks, token{kind: tokAtom, val: string(line[i:j])})
			i = j
		}
	}
	return toks, nil, nil
}

// unquote decodes the quoted string at the start of b and returns it with
// the number of octets it took.
func unquote(b []byte) (string, int, error) {
	var sb strings.Builder
	for i := 1; i < len(b); i++ {
		switch c := b[i]; c {
		case '"':
			return sb.String(), i + 1, nil
		case '\\':
			i++
			if i == len(b) || b[i] != '"' && b[i] != '\\' {
				return "", 0, errors.New("invalid escape in quoted string")
			}
			sb.WriteByte(b[i])
		case 0:
			return "", 0, errors.New("NUL in quoted string")
		default:
			sb.WriteByte(c)
		}
	}
	return "", 0, errors.New("unterminated quoted string")
}

// Responses. Texts are constants or built from our own data: never echo
// client input or backend errors: a client must learn nothing of the backend's
// hosts or internals, and must not be able to inject text into a response.

func (w *wire) untagged(text string) { w.bw.WriteString("* " + text + "\r\n") }

func (w *wire) continuation(text string) { w.bw.WriteString("+ " + text + "\r\n") }

// status writes a tagged (or, with an empty tag, untagged) status response;
// code is the response code without brackets, or empty.
func (w *wire) status(tag, status, code, text string) {
	if tag == "" {
		tag = "*"
	}
	w.bw.WriteString(tag + " " + status + " ")
	if code != "" {
		w.bw.WriteString("[" + code + "] ")
	}
	w.bw.WriteString(text + "\r\n")
}

func (w *wire) flush() error { return w.bw.Flush() }
