package upstream

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
)

func TestUIDLMapRecordRoundTrip(t *testing.T) {
	m := &uidlMap{backend: "store", uidValidity: 1700000000, epoch: 3, entries: []uidlEntry{
		{key: uidlKey{digest: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, size: 1234}, uid: 7, uidl: "000000075f3e1c00"},
		{key: uidlKey{digest: [8]byte{9}, size: 1 << 40}, uid: 0, uidl: "old-server-uidl~!"},
	}}
	b := m.encode()
	got, err := decodeUIDLMap(b)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(got) != fmt.Sprint(m) {
		t.Fatalf("round trip:\n got %+v\nwant %+v", got, m)
	}
	if m, err := decodeUIDLMap(nil); m != nil || err != nil {
		t.Fatalf("no record: %v, %v", m, err)
	}
	for _, bad := range [][]byte{{2}, b[:len(b)-1], append(slices.Clone(b), 0), {1, 0, 0, 0, 200}} {
		if _, err := decodeUIDLMap(bad); err == nil {
			t.Errorf("decode(%x) accepted a corrupt record", bad)
		}
	}
}

// FuzzDecodeUIDLMap: a record from the store never panics the decoder, and
// whatever it accepts encodes back to the same bytes.
func FuzzDecodeUIDLMap(f *testing.F) {
	f.Add((&uidlMap{backend: "b", uidValidity: 5, entries: []uidlEntry{{uid: 3, uidl: "x"}}}).encode())
	f.Add([]byte{1, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := decodeUIDLMap(b)
		if err != nil || m == nil {
			return
		}
		if again := m.encode(); !bytes.Equal(again, b) {
			// Uvarints have one canonical form only when minimal; a
			// non-minimal one must at least decode to the same map.
			m2, err := decodeUIDLMap(again)
			if err != nil || fmt.Sprint(m2) != fmt.Sprint(m) {
				t.Fatalf("re-encoding changed the map: %v / %v", m2, err)
			}
		}
	})
}

func TestHeaderDigestLineEnds(t *testing.T) {
	crlf := "From: a@b\r\nSubject: x\r\n\r\n"
	want, _ := headerDigest(strings.NewReader(crlf))
	lf, _ := headerDigest(strings.NewReader(strings.ReplaceAll(crlf, "\r\n", "\n")))
	if lf != want {
		t.Error("LF and CRLF header blocks have different digests")
	}
	// Written in pieces that split CR from LF, and LF alone at a piece start.
	d := newHeaderDigester()
	for _, p := range []string{"From: a@b\r", "\nSubject: x", "\n", "\r\n"} {
		d.Write([]byte(p))
	}
	if d.sum() != want {
		t.Error("a header block written in pieces has another digest")
	}
	other, _ := headerDigest(strings.NewReader("From: a@b\r\nSubject: y\r\n\r\n"))
	if other == want {
		t.Error("different headers, same digest")
	}
}

// digestOf is the test's header digest of a content id.
func digestOf(content int) [uidlDigestLen]byte {
	s := sha256.Sum256([]byte(fmt.Sprintf("Subject: %d\r\n\r\n", content)))
	return [uidlDigestLen]byte(s[:uidlDigestLen])
}

// session runs one matcher session over msgs (content ids by UID 1..n, or
// the UIDs given) and returns the UIDLs and the next map.
func matchSession(t *testing.T, old *uidlMap, backend string, v uint32, uids []uint32, contents []int, max int) ([]string, *uidlMap) {
	t.Helper()
	snap := make([]snapMsg, len(uids))
	byUID := map[uint32]int{}
	for i, uid := range uids {
		snap[i] = snapMsg{uid: uid, size: int64(100 + contents[i]%7)}
		byUID[uid] = contents[i]
	}
	digests := map[uint32][uidlDigestLen]byte{}
	for _, uid := range old.needDigests(backend, v, snap) {
		digests[uid] = digestOf(byUID[uid])
	}
	res, err := matchUIDLs(old, backend, v, snap, digests, "%08Xu%08Xv", max)
	if err != nil {
		t.Fatal(err)
	}
	next, err := decodeUIDLMap(res.next.encode())
	if err != nil {
		t.Fatal(err)
	}
	return res.uidls, next
}

func TestMatchUIDLs(t *testing.T) {
	// First session: exactly FormatUIDL's UIDLs, as without the map.
	uidls, m := matchSession(t, nil, "a", 0x5f3e1c00, []uint32{1, 2, 3}, []int{10, 11, 10}, 100)
	if want := []string{"000000015f3e1c00", "000000025f3e1c00", "000000035f3e1c00"}; !slices.Equal(uidls, want) {
		t.Fatalf("first session %q, want %q", uidls, want)
	}
	// Same UIDVALIDITY, one deleted, one new: nothing to fetch but the new.
	snap := []snapMsg{{1, 103}, {3, 103}, {4, 105}}
	if need := m.needDigests("a", 0x5f3e1c00, snap); !slices.Equal(need, []uint32{4}) {
		t.Fatalf("needDigests = %v, want only the new UID 4", need)
	}
	uidls, m = matchSession(t, m, "a", 0x5f3e1c00, []uint32{1, 3, 4}, []int{10, 10, 12}, 100)
	if want := []string{"000000015f3e1c00", "000000035f3e1c00", "000000045f3e1c00"}; !slices.Equal(uidls, want) {
		t.Fatalf("second session %q, want %q", uidls, want)
	}
	if len(m.entries) != 3 {
		t.Fatalf("the deleted message is still remembered: %+v", m.entries)
	}
	// UIDVALIDITY changed, UIDs renumbered in order; a new message: old
	// UIDLs kept (the duplicates by order), the new one in epoch 1.
	uidls, m = matchSession(t, m, "a", 7, []uint32{1, 2, 3, 4}, []int{10, 10, 12, 13}, 100)
	if want := []string{"000000015f3e1c00", "000000035f3e1c00", "000000045f3e1c00", "0000000400000007-1"}; !slices.Equal(uidls, want) {
		t.Fatalf("after the UIDVALIDITY change %q, want %q", uidls, want)
	}
	// Moved to another backend with the same UIDVALIDITY (7) and other
	// UIDs, one message missing: kept, and the missing one stays an orphan
	// that matches when it arrives later.
	uidls, m = matchSession(t, m, "b", 7, []uint32{1, 2, 3}, []int{13, 10, 10}, 100)
	if want := []string{"0000000400000007-1", "000000015f3e1c00", "000000035f3e1c00"}; !slices.Equal(uidls, want) {
		t.Fatalf("after the move %q, want %q", uidls, want)
	}
	if m.epoch != 2 || len(m.entries) != 4 || m.entries[3].uid != 0 {
		t.Fatalf("map after the move: %+v", m)
	}
	uidls, _ = matchSession(t, m, "b", 7, []uint32{1, 2, 3, 9}, []int{13, 10, 10, 12}, 100)
	if uidls[3] != "000000045f3e1c00" {
		t.Fatalf("the orphan did not match the message that came back: %q", uidls)
	}
}

func TestMatchUIDLsBound(t *testing.T) {
	_, m := matchSession(t, nil, "a", 1, []uint32{1, 2, 3, 4}, []int{1, 2, 3, 4}, 100)
	// Move: two messages missing (orphans), bound 3: one orphan dropped,
	// oldest first.
	uidls, m := matchSession(t, m, "b", 1, []uint32{1, 2}, []int{3, 4}, 3)
	if !slices.Equal(uidls, []string{"0000000300000001", "0000000400000001"}) {
		t.Fatalf("uidls %q", uidls)
	}
	if len(m.entries) != 3 || m.entries[2].uidl != "0000000200000001" {
		t.Fatalf("bound kept %+v, want the two present and the newer orphan", m.entries)
	}
	// More messages than the bound: the newest are not remembered, and get
	// the same UIDL next time.
	uidls1, m := matchSession(t, m, "b", 1, []uint32{1, 2, 3, 4, 5}, []int{3, 4, 5, 6, 7}, 3)
	if len(m.entries) != 3 {
		t.Fatalf("%d entries over a bound of 3", len(m.entries))
	}
	uidls2, _ := matchSession(t, m, "b", 1, []uint32{1, 2, 3, 4, 5}, []int{3, 4, 5, 6, 7}, 3)
	if !slices.Equal(uidls1, uidls2) {
		t.Fatalf("UIDLs of messages beyond the bound changed: %q then %q", uidls1, uidls2)
	}
}

func TestNewUIDLNeverTaken(t *testing.T) {
	used := map[string]bool{"0000000100000001-1": true}
	u, err := newUIDL("%08Xu%08Xv", 1, 1, 1, used)
	if err != nil || used[u] || !validUIDL(u) {
		t.Fatalf("newUIDL = %q, %v", u, err)
	}
	long := strings.Repeat("x", 60) + "%08Xu"
	u, err = newUIDL(long, 1, 1, 1, map[string]bool{})
	if err != nil || !validUIDL(u) {
		t.Fatalf("newUIDL over 70 characters: %q, %v", u, err)
	}
}

// FuzzUIDLMatcher is the matcher's property test: a random mailbox lives
// through random additions (byte-identical duplicates among them),
// deletions, UIDVALIDITY changes and moves between backends (renumbered in
// order or shuffled), with sessions in between. In every session the UIDLs are unique and valid
// (RFC 1939 §7); no UIDL is ever shown for two different messages; and,
// with a bound large enough, no message is shown under a UIDL it did not
// have before (a client would download it again), duplicates counted by
// content.
func FuzzUIDLMatcher(f *testing.F) {
	for seed := range uint64(8) {
		f.Add(seed, uint8(40), uint8(4), false)
	}
	f.Add(uint64(99), uint8(200), uint8(2), true)
	f.Fuzz(func(t *testing.T, seed uint64, steps, contents uint8, tight bool) {
		rng := rand.New(rand.NewPCG(seed, seed^0x5eed))
		if contents == 0 {
			contents = 1
		}
		type msg struct {
			id, content int
			uid         uint32
		}
		var (
			box      []msg
			nextID   int
			nextUID  uint32 = 1
			v        uint32 = 1
			backend         = "a"
			stored   *uidlMap
			shownFor = map[string]int{} // UIDL -> content
			prev     = map[int]string{} // message id -> UIDL, last session
			prevBy   = map[int][]string{}
			used     = map[string]bool{"a/1": true} // backend/UIDVALIDITY pairs
		)
		max := 100000
		if tight {
			max = 1 + rng.IntN(8)
		}
		for range int(steps) {
			switch op := rng.IntN(10); {
			case op < 3: // new mail
				for range 1 + rng.IntN(3) {
					box = append(box, msg{id: nextID, content: rng.IntN(int(contents)), uid: nextUID})
					nextID++
					nextUID++
				}
			case op < 4 && len(box) > 0: // a client deletes one
				i := rng.IntN(len(box))
				box = slices.Delete(box, i, i+1)
			case op < 5: // restored or migrated: new UIDVALIDITY, maybe a new backend
				// UIDs never change under one backend's UIDVALIDITY
				// (RFC 3501 §2.3.1.1): the new pair is one not used
				// before, maybe a backend seen before, maybe the same
				// UIDVALIDITY on another backend.
				for used[backend+"/"+fmt.Sprint(v)] {
					if rng.IntN(2) == 0 {
						v++
					} else {
						backend = fmt.Sprintf("b%d", rng.IntN(3))
					}
				}
				used[backend+"/"+fmt.Sprint(v)] = true
				if rng.IntN(2) == 0 {
					rng.Shuffle(len(box), func(i, j int) { box[i], box[j] = box[j], box[i] })
				}
				for i := range box {
					box[i].uid = uint32(i + 1)
				}
				nextUID = uint32(len(box) + 1)
			default: // a session
				slices.SortFunc(box, func(a, b msg) int { return int(a.uid) - int(b.uid) })
				uids := make([]uint32, len(box))
				cs := make([]int, len(box))
				for i, m := range box {
					uids[i], cs[i] = m.uid, m.content
				}
				uidls, next := matchSession(t, stored, backend, v, uids, cs, max)
				seen := map[string]bool{}
				now := map[int]string{}
				nowBy := map[int][]string{}
				for i, u := range uidls {
					if !validUIDL(u) {
						t.Fatalf("UIDL %q breaks RFC 1939 §7", u)
					}
					if seen[u] {
						t.Fatalf("UIDL %q shown twice in one maildrop: %q", u, uidls)
					}
					seen[u] = true
					if c, ok := shownFor[u]; ok && c != cs[i] {
						t.Fatalf("UIDL %q was shown for content %d and now for content %d", u, c, cs[i])
					}
					shownFor[u] = cs[i]
					now[box[i].id] = u
					nowBy[cs[i]] = append(nowBy[cs[i]], u)
				}
				if !tight {
					// No download twice: per content, as many of the
					// messages still there as were shown before keep a
					// UIDL shown for that content before.
					stillThere := map[int]int{}
					for _, m := range box {
						if _, ok := prev[m.id]; ok {
							stillThere[m.content]++
						}
					}
					for c, n := range stillThere {
						kept := 0
						for _, u := range nowBy[c] {
							if slices.Contains(prevBy[c], u) {
								kept++
							}
						}
						if kept < n {
							t.Fatalf("content %d: %d messages were there before, only %d kept their UIDLs (%q -> %q)", c, n, kept, prevBy[c], nowBy[c])
						}
					}
				}
				prev, prevBy = now, nowBy
				stored = next
			}
		}
	})
}
