package main

import (
	"bytes"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestUDPEcho(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { udpEcho(pc, "box"); close(done) }()
	defer func() { pc.Close(); <-done }()

	var out bytes.Buffer
	if err := udpClient([]string{pc.LocalAddr().String(), "hello there", "--timeout", "2s"}, &out); err != nil {
		t.Fatal(err)
	}
	if got := out.String(); got != "hostname=box hello there\n" {
		t.Fatalf("reply %q", got)
	}
}

func TestUDPClientTimeout(t *testing.T) {
	// A socket nobody reads: the datagram goes in, no reply comes out.
	silent, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	start := time.Now()
	err = udpClient([]string{silent.LocalAddr().String(), "x", "--timeout", "200ms"}, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "no reply") {
		t.Fatalf("err %v, want a timeout", err)
	}
	if d := time.Since(start); d < 200*time.Millisecond || d > 5*time.Second {
		t.Fatalf("gave up after %v, want about 200ms", d)
	}
	if err := udpClient([]string{"127.0.0.1:1"}, io.Discard); err == nil || !strings.Contains(err.Error(), "usage") {
		t.Fatalf("without MSG: %v", err)
	}
}

func TestServeBytes(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(serveBytes))
	defer srv.Close()
	for _, n := range []int64{0, 1, bytesChunk - 1, 3*bytesChunk + 5} {
		resp, err := http.Get(srv.URL + "/bytes?n=" + strconv.FormatInt(n, 10))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || got != n || resp.ContentLength != n {
			t.Fatalf("n=%d: read %d (%v), Content-Length %d", n, got, err, resp.ContentLength)
		}
	}
	resp, err := http.Get(srv.URL + "/bytes?n=-1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("n=-1: %s", resp.Status)
	}
}
