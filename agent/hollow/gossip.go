package hollow

import (
	"bytes"
	"context"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/memberlist"

	"flotilla/cluster"
)

// delegate gives memberlist this node's metadata; the rest of
// memberlist.Delegate is unused (agents exchange nothing but metadata).
type delegate struct {
	meta atomic.Pointer[[]byte]
}

func (d *delegate) NodeMeta(limit int) []byte {
	p := d.meta.Load()
	if p == nil || len(*p) > limit {
		return nil
	}
	return *p
}

func (d *delegate) NotifyMsg([]byte)                {}
func (d *delegate) GetBroadcasts(int, int) [][]byte { return nil }
func (d *delegate) LocalState(bool) []byte          { return nil }
func (d *delegate) MergeRemoteState([]byte, bool)   {}

// setMeta encodes the agent metadata with the cluster ID, "" while unknown
// (servers accept a member without one).
func (d *delegate) setMeta(clusterID string) error {
	meta := map[string]string{cluster.MetaRole: cluster.RoleAgent}
	if clusterID != "" {
		meta[cluster.MetaClusterID] = clusterID
	}
	buf, err := cluster.EncodeMeta(meta)
	if err != nil {
		return err
	}
	d.meta.Store(&buf)
	return nil
}

// clusterIDOf returns the cluster ID a server member advertises, if any.
func clusterIDOf(members []*memberlist.Node) string {
	for _, m := range members {
		meta, err := cluster.DecodeMeta(m.Meta)
		if err != nil || meta[cluster.MetaRole] != cluster.RoleServer {
			continue
		}
		if id := meta[cluster.MetaClusterID]; id != "" {
			return id
		}
	}
	return ""
}

// levelWriter adapts memberlist's "[LEVEL] msg" log lines to slog.
type levelWriter struct{ l *slog.Logger }

func newStdLogger(l *slog.Logger) *log.Logger { return log.New(&levelWriter{l: l}, "", 0) }

var stdLevels = []struct {
	prefix string
	level  slog.Level
}{
	{"[DEBUG]", slog.LevelDebug},
	{"[INFO]", slog.LevelInfo},
	{"[WARN]", slog.LevelWarn},
	{"[ERR]", slog.LevelError},
	{"[ERROR]", slog.LevelError},
}

func (w *levelWriter) Write(p []byte) (int, error) {
	for _, line := range bytes.Split(bytes.TrimRight(p, "\n"), []byte("\n")) {
		msg := strings.TrimSpace(string(line))
		// Strip memberlist's "memberlist: " prefix after the level.
		level := slog.LevelInfo
		for _, s := range stdLevels {
			if strings.HasPrefix(msg, s.prefix) {
				level, msg = s.level, strings.TrimSpace(msg[len(s.prefix):])
				break
			}
		}
		if msg != "" && w.l.Enabled(context.Background(), level) {
			w.l.Log(context.Background(), level, msg)
		}
	}
	return len(p), nil
}
