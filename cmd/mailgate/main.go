// Command mailgate is a mail access gateway: POP3 and IMAP in front of IMAP
// backends, with automatic TLS. See README.md.
//
//	mailgate serve /etc/mailgate/mailgate.yaml   (or serve -config FILE)
//	mailgate check-config /etc/mailgate/mailgate.yaml
//	mailgate demo
//	mailgate uidl-import | uidl-drop | uidl-stats -config FILE ...
//	mailgate version
package main

import (
	"bytes"
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
  serve [FILE]          run the gateway (FILE, or -config FILE; default /etc/mailgate/mailgate.yaml)
  check-config FILE     validate a configuration file; prints every problem, exits 1 if any
  demo                  run a self-contained demo (in-memory IMAP backend) on 127.0.0.1;
                        -host, -pop3, -pop3s, -imap, -imaps choose the addresses (mailgate demo -h)
  healthcheck URL       GET URL (e.g. http://127.0.0.1:9110/healthz); exit 0 on 200 (container probes)
  uidl-import           record an old POP3 server's UIDLs in pop3.uidl_map (mailgate uidl-import -h)
  uidl-drop USER...     forget users' UIDL maps (deleted users)
  uidl-stats            what pop3.uidl_map's store holds, and its bytes per message
  version               print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// commands are the subcommands, by name; each takes the arguments after its
// name and returns the exit code.
var commands = map[string]func(args []string, stdout, stderr io.Writer) int{
	"serve":        serve,
	"check-config": checkConfig,
	"demo":         demo,
	"healthcheck":  healthcheck,
	"uidl-import":  uidlImport,
	"uidl-drop":    uidlDrop,
	"uidl-stats":   uidlStats,
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	if cmd, ok := commands[args[0]]; ok {
		return cmd(args[1:], stdout, stderr)
	}
	switch args[0] {
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
	fs, path := configFlags("check-config", "", "configuration file (or give FILE as the argument)")
	if code, ok := parseConfigArgs(fs, path, args, "check-config FILE", stdout, stderr); !ok {
		return code
	}
	if *path == "" {
		fmt.Fprintln(stderr, "usage: mailgate check-config FILE")
		return 2
	}
	cfg, err := config.Load(*path)
	if err != nil {
		fmt.Fprintf(stderr, "%s:\n%v\n", *path, err)
		return 1
	}
	for _, w := range cfg.Warnings() {
		fmt.Fprintf(stderr, "%s: warning: %s\n", *path, w)
	}
	fmt.Fprintf(stdout, "%s: OK\n", *path)
	return 0
}

// defaultConfig is where serve and the uidl-* commands look without -config.
const defaultConfig = "/etc/mailgate/mailgate.yaml"

// configFlags is the flag set of subcommand name with its -config flag
// (default def, described by help).
func configFlags(name, def, help string) (fs *flag.FlagSet, path *string) {
	fs = flag.NewFlagSet(name, flag.ContinueOnError)
	return fs, fs.String("config", def, help)
}

// parseConfigArgs is parseFlags, then configPath: the commands that take the
// configuration file as -config or as their one argument.
func parseConfigArgs(fs *flag.FlagSet, path *string, args []string, synopsis string, stdout, stderr io.Writer) (code int, ok bool) {
	if code, ok := parseFlags(fs, args, synopsis, stdout, stderr); !ok {
		return code, false
	}
	if !configPath(fs, path, synopsis, stderr) {
		return 2, false
	}
	return 0, true
}

// parseFlags parses a subcommand's flags. -h and --help print the usage on
// stdout and exit 0; a bad flag prints it on stderr and exits 2. ok is false
// when the caller must return code.
func parseFlags(fs *flag.FlagSet, args []string, synopsis string, stdout, stderr io.Writer) (code int, ok bool) {
	var buf bytes.Buffer
	fs.SetOutput(&buf)
	fs.Usage = func() {
		fmt.Fprintf(&buf, "usage: mailgate %s\n", synopsis)
		fs.PrintDefaults()
	}
	err := fs.Parse(args)
	fs.SetOutput(stderr)
	switch {
	case err == nil:
		return 0, true
	case errors.Is(err, flag.ErrHelp):
		stdout.Write(buf.Bytes())
		return 0, false
	default:
		stderr.Write(buf.Bytes())
		return 2, false
	}
}

// configPath takes the configuration file from -config or from the one
// argument, the same for serve and check-config. Both at once must agree;
// anything more is refused rather than silently ignored.
func configPath(fs *flag.FlagSet, path *string, synopsis string, stderr io.Writer) bool {
	explicit := false
	fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	switch {
	case fs.NArg() == 0:
		return true
	case fs.NArg() == 1 && (!explicit || *path == fs.Arg(0)):
		*path = fs.Arg(0)
		return true
	case fs.NArg() == 1:
		fmt.Fprintf(stderr, "mailgate: two configuration files, -config %s and %s: give one\nusage: mailgate %s\n", *path, fs.Arg(0), synopsis)
	default:
		fmt.Fprintf(stderr, "mailgate: unexpected arguments %q\nusage: mailgate %s\n", fs.Args()[1:], synopsis)
	}
	return false
}

func serve(args []string, stdout, stderr io.Writer) int {
	fs, path := configFlags("serve", defaultConfig, "configuration file (or give FILE as the argument)")
	if code, ok := parseConfigArgs(fs, path, args, "serve [FILE | -config FILE]", stdout, stderr); !ok {
		return code
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
	logWarnings(log, cfg)

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
			logWarnings(log, next)
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

// logWarnings logs what check-config prints as warnings: valid, but
// probably not what the operator meant.
func logWarnings(log *zap.Logger, cfg *config.Config) {
	for _, w := range cfg.Warnings() {
		log.Warn("configuration warning", zap.String("path", w.Path), zap.Int("line", w.Line), zap.String("problem", w.Message))
	}
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
