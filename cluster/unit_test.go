package cluster

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"flotilla/fsm"
)

func TestDeadServerToRemove(t *testing.T) {
	now := time.Now()
	long := now.Add(-time.Hour)
	short := now.Add(-time.Second)
	cleanup := time.Minute
	tests := []struct {
		name   string
		voters []string
		alive  []string
		down   map[string]time.Time
		want   string
	}{
		{"all alive", []string{"a", "b", "c"}, []string{"a", "b", "c"}, nil, ""},
		{"3 voters 1 dead long", []string{"a", "b", "c"}, []string{"a", "b"}, map[string]time.Time{"c": long}, "c"},
		{"3 voters 1 dead briefly", []string{"a", "b", "c"}, []string{"a", "b"}, map[string]time.Time{"c": short}, ""},
		{"3 voters 2 dead", []string{"a", "b", "c"}, []string{"a"}, map[string]time.Time{"b": long, "c": long}, ""},
		{"2 voters 1 dead", []string{"a", "b"}, []string{"a"}, map[string]time.Time{"b": long}, ""},
		{"4 voters 1 dead", []string{"a", "b", "c", "d"}, []string{"a", "b", "c"}, map[string]time.Time{"d": long}, "d"},
		{"4 voters 2 dead", []string{"a", "b", "c", "d"}, []string{"a", "b"}, map[string]time.Time{"c": long, "d": long}, ""},
		{"5 voters 2 dead: longest first", []string{"a", "b", "c", "d", "e"}, []string{"a", "b", "c"},
			map[string]time.Time{"d": long, "e": long.Add(-time.Minute)}, "e"},
		{"never self", []string{"a"}, nil, map[string]time.Time{"a": long}, ""},
		{"unknown down time", []string{"a", "b", "c"}, []string{"a", "b"}, nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			alive := map[string]bool{}
			for _, a := range tt.alive {
				alive[a] = true
			}
			if got := deadServerToRemove(tt.voters, "a", alive, tt.down, now, cleanup); got != tt.want {
				t.Errorf("deadServerToRemove = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMeta(t *testing.T) {
	meta := map[string]string{MetaRole: RoleServer, MetaRaftAddr: "10.0.0.1:6444", MetaClusterID: newClusterID()}
	buf, err := EncodeMeta(meta)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeMeta(buf)
	if err != nil || got[MetaClusterID] != meta[MetaClusterID] || got[MetaRole] != RoleServer {
		t.Fatalf("DecodeMeta = %v, %v", got, err)
	}
	if _, err := EncodeMeta(map[string]string{"x": strings.Repeat("y", MaxMetaSize)}); err == nil {
		t.Error("EncodeMeta accepted metadata over the limit")
	}
	if m, err := DecodeMeta(nil); err != nil || len(m) != 0 {
		t.Errorf("DecodeMeta(nil) = %v, %v", m, err)
	}
	if !validClusterID(newClusterID()) || validClusterID("../x") {
		t.Error("validClusterID")
	}
}

// TestErrorCodes: what a leader's handler writes, a forwarding follower
// turns back into the same sentinel.
func TestErrorCodes(t *testing.T) {
	tests := []struct {
		err       error
		want      error
		retryable bool
	}{
		{ErrNotLeader, ErrNotLeader, true},
		{ErrNoLeader, ErrNoLeader, true},
		{mapRaftError(raft.ErrLeadershipLost), ErrOutcomeUnknown, false},
		{mapRaftError(raft.ErrRaftShutdown), ErrOutcomeUnknown, false},
		{fsm.ErrTxnTooLarge, fsm.ErrTxnTooLarge, false},
		{fsm.ErrValueTooLarge, fsm.ErrValueTooLarge, false},
		{fsm.ErrInvalidTxn, fsm.ErrInvalidTxn, false},
		{ErrUnknownPeer, ErrUnknownPeer, false},
	}
	for _, tt := range tests {
		code, status := errorCode(tt.err)
		got := errorFromCode(code, tt.err.Error())
		if !errors.Is(got, tt.want) || retryable(got) != tt.retryable {
			t.Errorf("%v → %s (%d) → %v (retryable %v)", tt.err, code, status, got, retryable(got))
		}
	}
	if err := mapRaftError(raft.ErrNotLeader); !retryable(err) || !errors.Is(err, ErrNotLeader) || !errors.Is(err, raft.ErrNotLeader) {
		t.Errorf("mapRaftError(ErrNotLeader) = %v", err)
	}
	if err := mapRaftError(raft.ErrLeadershipLost); !errors.Is(err, ErrOutcomeUnknown) || !errors.Is(err, raft.ErrLeadershipLost) {
		t.Errorf("mapRaftError(ErrLeadershipLost) = %v", err)
	}
}

func TestHCLogAdapter(t *testing.T) {
	var buf bytes.Buffer
	l := newHCLog(slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo})), "raft")
	l.Debug("hidden")
	l.Named("net").With("peer", "a").Warn("slow", "took", hclog.Fmt("%dms", 5))
	l.StandardLogger(nil).Print("[ERR] memberlist: boom")
	out := buf.String()
	for _, want := range []string{"level=WARN msg=slow", "logger=raft.net", "peer=a", "took=5ms", "level=ERROR msg=\"memberlist: boom\""} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "hidden") || l.IsDebug() || !l.IsWarn() {
		t.Errorf("levels not respected:\n%s", out)
	}
}
