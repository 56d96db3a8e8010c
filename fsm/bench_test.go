package fsm

import (
	"fmt"
	"runtime"
	"sync"
	"testing"

	"github.com/hashicorp/raft"
)

// BenchmarkApply applies one-put transactions of 1 KiB values over 10,000 keys.
func BenchmarkApply(b *testing.B) {
	s := New(Config{})
	value := make([]byte, 1024)
	entries := make([][]byte, 10_000)
	for i := range entries {
		entries[i] = mustEncode(b, &Txn{Ops: []Op{{Type: OpPut, Key: fmt.Sprintf("/core/pods/ns%d/pod-%05d", i%10, i), Value: value}}})
	}
	b.ReportAllocs()
	b.SetBytes(1024)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: entries[i%len(entries)]})
	}
}

// BenchmarkApplyBatch64 is BenchmarkApply in raft's batches of 64 entries.
func BenchmarkApplyBatch64(b *testing.B) {
	s := New(Config{})
	value := make([]byte, 1024)
	logs := make([]*raft.Log, 64)
	for i := range logs {
		logs[i] = &raft.Log{Type: raft.LogCommand}
	}
	entries := make([][]byte, 10_000)
	for i := range entries {
		entries[i] = mustEncode(b, &Txn{Ops: []Op{{Type: OpPut, Key: fmt.Sprintf("/core/pods/ns%d/pod-%05d", i%10, i), Value: value}}})
	}
	b.ReportAllocs()
	b.SetBytes(1024)
	b.ResetTimer()
	index := uint64(0)
	for i := 0; i < b.N; i += len(logs) {
		for j, l := range logs {
			index++
			l.Index, l.Data = index, entries[(i+j)%len(entries)]
		}
		s.ApplyBatch(logs)
	}
}

// BenchmarkList10k lists a prefix of 10,000 keys while another prefix is written.
func BenchmarkList10k(b *testing.B) {
	s := New(Config{})
	for i := range 10_000 {
		put(b, s, fmt.Sprintf("/core/pods/ns/pod-%05d", i), "value")
	}
	for i := range 1_000 {
		put(b, s, fmt.Sprintf("/core/nodes/n%d", i), "value")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%10 == 0 {
			put(b, s, "/core/nodes/n1", "changed") // every tenth list needs a fresh clone
		}
		res, err := s.List("/core/pods/", ListOptions{})
		if err != nil || len(res.KVs) != 10_000 {
			b.Fatalf("%d keys, %v", len(res.KVs), err)
		}
	}
}

// BenchmarkList10kPaged walks the same 10,000 keys in pages of 500.
func BenchmarkList10kPaged(b *testing.B) {
	s := New(Config{})
	for i := range 10_000 {
		put(b, s, fmt.Sprintf("/core/pods/ns/pod-%05d", i), "value")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var rev uint64
		after, n := "", 0
		for {
			res, err := s.List("/core/pods/", ListOptions{Revision: rev, After: after, Limit: 500})
			if err != nil {
				b.Fatal(err)
			}
			n += len(res.KVs)
			if !res.More {
				break
			}
			rev, after = res.Revision, res.KVs[len(res.KVs)-1].Key
		}
		if n != 10_000 {
			b.Fatalf("%d keys", n)
		}
	}
}

// BenchmarkWatchFanout applies one put per op to a prefix 100 watchers
// follow, and waits until every watcher has received it all.
func BenchmarkWatchFanout(b *testing.B) {
	for _, watchers := range []int{10, 100, 1000} {
		b.Run(fmt.Sprint(watchers), func(b *testing.B) {
			s := New(Config{WatcherBuffer: 1 << 30})
			value := make([]byte, 1024)
			data := mustEncode(b, &Txn{Ops: []Op{{Type: OpPut, Key: "/core/pods/ns/p", Value: value}}})
			var wg sync.WaitGroup
			for range watchers {
				w, err := s.Watch("/core/pods/", 0)
				if err != nil {
					b.Fatal(err)
				}
				defer w.Stop()
				wg.Add(1)
				go func() {
					defer wg.Done()
					for n := 0; n < b.N; n++ {
						if _, ok := <-w.Events(); !ok {
							b.Errorf("watcher closed: %v", w.Err())
							return
						}
					}
				}()
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				s.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: data})
			}
			wg.Wait()
			b.ReportMetric(float64(b.N*watchers)/b.Elapsed().Seconds(), "events/s")
		})
	}
}

// BenchmarkMemory150k loads 150,000 keys of 2 KiB (the sizing target: a
// server holds them in 600 MiB RSS) and reports the live heap.
func BenchmarkMemory150k(b *testing.B) {
	if testing.Short() {
		b.Skip("loads 300 MiB")
	}
	for i := 0; i < b.N; i++ {
		s := New(Config{})
		value := make([]byte, 2048)
		logs := make([]*raft.Log, 64)
		index := uint64(0)
		for k := 0; k < 150_000; k += len(logs) {
			for j := range logs {
				index++
				logs[j] = &raft.Log{Index: index, Type: raft.LogCommand, Data: mustEncode(b, &Txn{Ops: []Op{{
					Type: OpPut, Key: fmt.Sprintf("/core/configmaps/ns-%03d/cm-%06d", (k+j)%500, k+j), Value: value,
				}}})}
			}
			s.ApplyBatch(logs)
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		b.ReportMetric(float64(ms.HeapAlloc)/(1<<20), "heap-MiB")
		b.ReportMetric(float64(ms.HeapAlloc)/float64(s.Stats().Keys), "heap-B/key")
		runtime.KeepAlive(s)
	}
}
