package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap"

	"mailgate/gateway/config"
)

// TestLoggerNeverSamples: finding 9 of the hostile internet issue. A burst
// of identical lines (3,000 "logged in" in well under a second, as in a
// stress run) is written whole, in both formats: zap's production
// sampling would keep about 100 of them.
func TestLoggerNeverSamples(t *testing.T) {
	for _, format := range []string{"json", "console"} {
		t.Run(format, func(t *testing.T) {
			zc, _, err := loggerConfig(config.Log{Level: "info", Format: format})
			if err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(t.TempDir(), "log")
			zc.OutputPaths = []string{out}
			log, err := zc.Build()
			if err != nil {
				t.Fatal(err)
			}
			const n = 3000
			for i := range n {
				log.Info("logged in", zap.Int("i", i))
				log.Warn("login failed", zap.String("client_ip", "192.0.2.1"))
			}
			log.Sync()
			b, err := os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			s := string(b)
			if got := strings.Count(s, "logged in"); got != n {
				t.Errorf("%d of %d \"logged in\" lines written", got, n)
			}
			if got := strings.Count(s, "login failed"); got != n {
				t.Errorf("%d of %d \"login failed\" lines written", got, n)
			}
		})
	}
}
