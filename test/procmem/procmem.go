// Package procmem reads the memory figures the benchmark tools report
// (test/imapbench, test/mailbench): a process's RSS and PSS from /proc, the
// kernel's TCP buffer memory, and a Go process's own heap, stacks and
// goroutines, which a child process reports to its parent as one line.
//
//	rss, pss, err := procmem.SmapsRollup(pid)
//	fmt.Println(procmem.GCReport())           // in the child: "mem HEAP STACK GOROUTINES"
//	heap, stack, g, err := procmem.ParseGCReport(line) // in the parent
//	procmem.Serve(os.Stdin, os.Stdout)        // a child answering its parent's requests
package procmem

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"strconv"
	"strings"
)

// SmapsRollup returns a process's Rss and Pss in bytes.
func SmapsRollup(pid int) (rss, pss int64, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid))
	if err != nil {
		return 0, 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			continue
		}
		kb, _ := strconv.ParseInt(f[1], 10, 64)
		switch f[0] {
		case "Rss:":
			rss = kb << 10
		case "Pss:":
			pss = kb << 10
		}
	}
	return rss, pss, nil
}

// TCPMemBytes is the kernel's TCP buffer memory, machine-wide: the "mem"
// pages of /proc/net/sockstat's TCP line. It is in no process's RSS.
func TCPMemBytes() int64 {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || f[0] != "TCP:" {
			continue
		}
		for i := 1; i+1 < len(f); i += 2 {
			if f[i] == "mem" {
				pages, _ := strconv.ParseInt(f[i+1], 10, 64)
				return pages * int64(os.Getpagesize())
			}
		}
	}
	return 0
}

// GCReport collects garbage, returns freed memory to the OS and reports the
// heap in use, the stacks in use and the goroutines as
// "mem HEAP STACK GOROUTINES". The caller asks twice for a settled figure: the
// first GC may shrink goroutine stacks only by half.
func GCReport() string {
	runtime.GC()
	debug.FreeOSMemory()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return fmt.Sprintf("mem %d %d %d", ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine())
}

// ParseGCReport reads a GCReport line.
func ParseGCReport(line string) (heap, stack int64, goroutines int, err error) {
	if _, err := fmt.Sscanf(line, "mem %d %d %d", &heap, &stack, &goroutines); err != nil {
		return 0, 0, 0, fmt.Errorf("not a memory report: %q", line)
	}
	return heap, stack, goroutines, nil
}

// Serve answers a parent's requests, one a line, until in ends: "gc" with
// GCReport, "heap FILE" and "goroutine FILE" by writing that runtime/pprof
// profile and answering "ok" (or "error ...").
func Serve(in io.Reader, out io.Writer) {
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		req, arg, _ := strings.Cut(sc.Text(), " ")
		switch req {
		case "gc":
			fmt.Fprintln(out, GCReport())
		case "heap", "goroutine":
			if err := writeProfile(req, arg); err != nil {
				fmt.Fprintln(out, "error", err)
			} else {
				fmt.Fprintln(out, "ok")
			}
		default:
			fmt.Fprintln(out, "error unknown request")
		}
	}
}

func writeProfile(name, file string) error {
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if name == "heap" {
		runtime.GC()
	}
	err = pprof.Lookup(name).WriteTo(f, 0)
	return errors.Join(err, f.Close())
}
