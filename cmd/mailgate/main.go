// Command mailgate is a mail access gateway: POP3 and IMAP in front of IMAP
// backends, with automatic TLS. See README.md.
//
//	mailgate serve -config /etc/mailgate/mailgate.yaml
//	mailgate check-config /etc/mailgate/mailgate.yaml
//	mailgate demo
//	mailgate version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"mailgate/gateway"
	"mailgate/gateway/config"
)

// version is set at build time with -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `usage: mailgate <command> [arguments]

commands:
  serve -config FILE    run the gateway
  check-config FILE     validate a configuration file; prints every problem, exits 1 if any
  demo                  run a self-contained demo (in-memory IMAP backend) on 127.0.0.1
  healthcheck URL       GET URL (e.g. http://127.0.0.1:9110/healthz); exit 0 on 200 (container probes)
  version               print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "serve":
		return serve(args[1:], stderr)
	case "check-config":
		return checkConfig(args[1:], stdout, stderr)
	case "demo":
		return demo(args[1:], stdout, stderr)
	case "healthcheck":
		return healthcheck(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		fmt.Fprintf(stdout, "mailgate %s\n", versionString())
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "mailgate: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == "dev" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version
		}
		return v + " (" + bi.GoVersion + ")"
	}
	return v
}

func checkConfig(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *path == "" && fs.NArg() == 1 {
		*path = fs.Arg(0)
	}
	if *path == "" {
		fmt.Fprintln(stderr, "usage: mailgate check-config FILE")
		return 2
	}
	if _, err := config.Load(*path); err != nil {
		fmt.Fprintf(stderr, "%s:\n%v\n", *path, err)
		return 1
	}
	fmt.Fprintf(stdout, "%s: OK\n", *path)
	return 0
}

func serve(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "/etc/mailgate/mailgate.yaml", "configuration file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "%s:\n%v\n", *path, err)
		return 1
	}
	log, level, err := newLogger(cfg.Log)
	if err != nil {
		fmt.Fprintf(stderr, "mailgate: %v\n", err)
		return 1
	}
	defer log.Sync() //nolint:errcheck // stderr sync fails harmlessly
	log.Info("starting", zap.String("version", versionString()), zap.String("config", *path))

	srv, err := gateway.New(cfg, log)
	if err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := srv.Start(ctx); err != nil {
		log.Error("cannot start", zap.Error(err))
		return 1
	}
	return waitForSignals(srv, log, level, *path, cfg)
}

// waitForSignals runs until SIGTERM/SIGINT; SIGHUP reloads the configuration,
// keeping the old one when the new file does not validate.
func waitForSignals(srv *gateway.Server, log *zap.Logger, level zap.AtomicLevel, path string, cfg *config.Config) int {
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGHUP, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(sigs)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			next, err := config.Load(path)
			if err != nil {
				log.Error("reload refused: configuration invalid; keeping the running one", zap.Error(err))
				continue
			}
			if err := srv.Reload(next); err != nil {
				log.Error("reload failed; keeping the running configuration", zap.Error(err))
				continue
			}
			if l, err := zap.ParseAtomicLevel(next.Log.Level); err == nil {
				level.SetLevel(l.Level())
			}
			cfg = next
			continue
		}
		log.Info("shutting down", zap.Stringer("signal", sig), zap.Duration("grace", cfg.Timeouts.Shutdown))
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeouts.Shutdown)
		err := srv.Shutdown(ctx)
		cancel()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			log.Error("shutdown", zap.Error(err))
			return 1
		}
		log.Info("stopped")
		return 0
	}
	return 0
}

// newLogger builds the process logger from the `log:` section: JSON by
// default (one object per line, ISO 8601 times), console for humans.
func newLogger(c config.Log) (*zap.Logger, zap.AtomicLevel, error) {
	zc, level, err := loggerConfig(c)
	if err != nil {
		return nil, level, err
	}
	log, err := zc.Build()
	return log, level, err
}

// loggerConfig is newLogger's zap configuration. It never samples: auth
// failures, logins, session ends and warnings are what operators audit and
// fail2ban reads, so under load every line must still be written (zap's
// production preset keeps 100 a second per message, then 1 in 100).
func loggerConfig(c config.Log) (zap.Config, zap.AtomicLevel, error) {
	level, err := zap.ParseAtomicLevel(c.Level)
	if err != nil {
		return zap.Config{}, level, fmt.Errorf("log.level: %w", err)
	}
	zc := zap.NewProductionConfig()
	if c.Format == "console" {
		zc = zap.NewDevelopmentConfig()
		zc.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	}
	zc.Sampling = nil
	zc.Level = level
	zc.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	zc.DisableStacktrace = true
	return zc, level, nil
}
