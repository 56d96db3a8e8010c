package cluster

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// hclogAdapter is the hclog.Logger raft wants, writing to the injected
// slog.Logger. Trace maps below slog's Debug; SetLevel adds a floor on top of
// what the slog handler enables.
type hclogAdapter struct {
	l       *slog.Logger // without the name; Log adds it
	name    string
	implied []any
	floor   *atomic.Int32 // hclog.Level; shared by derived loggers
}

func newHCLog(l *slog.Logger, name string) hclog.Logger {
	floor := new(atomic.Int32)
	floor.Store(int32(hclog.Trace))
	return &hclogAdapter{l: l, name: name, floor: floor}
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace:
		return slog.LevelDebug - 4
	case hclog.Debug:
		return slog.LevelDebug
	case hclog.Warn:
		return slog.LevelWarn
	case hclog.Error:
		return slog.LevelError
	default:
		return slog.LevelInfo
	}
}

func (h *hclogAdapter) enabled(level hclog.Level) bool {
	if level == hclog.Off || level < hclog.Level(h.floor.Load()) {
		return false
	}
	return h.l.Enabled(context.Background(), slogLevel(level))
}

func (h *hclogAdapter) Log(level hclog.Level, msg string, args ...any) {
	if !h.enabled(level) {
		return
	}
	h.l.Log(context.Background(), slogLevel(level), msg, append([]any{"logger", h.name}, convertArgs(args)...)...)
}

// convertArgs turns hclog's key/value pairs into slog's, expanding
// hclog.Fmt values.
func convertArgs(args []any) []any {
	out := make([]any, 0, len(args))
	for i := 0; i < len(args); i++ {
		v := args[i]
		if i%2 == 1 {
			if f, ok := v.(hclog.Format); ok && len(f) > 0 {
				if s, ok := f[0].(string); ok {
					v = fmt.Sprintf(s, f[1:]...)
				}
			}
		}
		out = append(out, v)
	}
	return out
}

func (h *hclogAdapter) Trace(msg string, args ...any) { h.Log(hclog.Trace, msg, args...) }
func (h *hclogAdapter) Debug(msg string, args ...any) { h.Log(hclog.Debug, msg, args...) }
func (h *hclogAdapter) Info(msg string, args ...any)  { h.Log(hclog.Info, msg, args...) }
func (h *hclogAdapter) Warn(msg string, args ...any)  { h.Log(hclog.Warn, msg, args...) }
func (h *hclogAdapter) Error(msg string, args ...any) { h.Log(hclog.Error, msg, args...) }
func (h *hclogAdapter) IsTrace() bool                 { return h.enabled(hclog.Trace) }
func (h *hclogAdapter) IsDebug() bool                 { return h.enabled(hclog.Debug) }
func (h *hclogAdapter) IsInfo() bool                  { return h.enabled(hclog.Info) }
func (h *hclogAdapter) IsWarn() bool                  { return h.enabled(hclog.Warn) }
func (h *hclogAdapter) IsError() bool                 { return h.enabled(hclog.Error) }
func (h *hclogAdapter) ImpliedArgs() []any            { return h.implied }
func (h *hclogAdapter) Name() string                  { return h.name }
func (h *hclogAdapter) SetLevel(level hclog.Level)    { h.floor.Store(int32(level)) }
func (h *hclogAdapter) GetLevel() hclog.Level         { return hclog.Level(h.floor.Load()) }

func (h *hclogAdapter) With(args ...any) hclog.Logger {
	c := *h
	c.implied = append(append([]any(nil), h.implied...), args...)
	c.l = h.l.With(convertArgs(args)...)
	return &c
}

func (h *hclogAdapter) Named(name string) hclog.Logger {
	if h.name != "" {
		name = h.name + "." + name
	}
	return h.ResetNamed(name)
}

func (h *hclogAdapter) ResetNamed(name string) hclog.Logger {
	c := *h
	c.name = name
	return &c
}

func (h *hclogAdapter) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(h.StandardWriter(opts), "", 0)
}

func (h *hclogAdapter) StandardWriter(*hclog.StandardLoggerOptions) io.Writer {
	return &levelWriter{l: h.l.With("logger", h.name)}
}

// levelWriter turns lines of the standard log package, as memberlist and
// hclog's standard loggers write them ("[WARN] memberlist: ..."), into slog
// records at the level the prefix names (Info when there is none).
type levelWriter struct{ l *slog.Logger }

var stdLevels = []struct {
	prefix string
	level  slog.Level
}{
	{"[TRACE]", slog.LevelDebug - 4}, {"[DEBUG]", slog.LevelDebug}, {"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn}, {"[ERR]", slog.LevelError}, {"[ERROR]", slog.LevelError},
}

// NewStdLogger is a standard logger whose "[LEVEL] msg" lines (memberlist's)
// become slog records at that level; agents' gossip uses it too.
func NewStdLogger(l *slog.Logger) *log.Logger { return log.New(&levelWriter{l: l}, "", 0) }

func (w *levelWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		msg := strings.TrimSpace(string(line))
		level := slog.LevelInfo
		for _, p := range stdLevels {
			if strings.HasPrefix(msg, p.prefix) {
				level, msg = p.level, strings.TrimSpace(msg[len(p.prefix):])
				break
			}
		}
		if msg != "" && w.l.Enabled(context.Background(), level) {
			w.l.Log(context.Background(), level, msg)
		}
	}
	return len(p), nil
}
