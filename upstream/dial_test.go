package upstream

import (
	"bufio"
	"context"
	"net"
	"testing"
	"time"

	proxyproto "github.com/pires/go-proxyproto"
)

func TestDialSendsProxyHeader(t *testing.T) {
	for _, version := range []string{"v1", "v2"} {
		t.Run(version, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			got := make(chan *proxyproto.Header, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				h, _ := proxyproto.Read(bufio.NewReader(c))
				got <- h
			}()
			cfg := &BackendConfig{Address: ln.Addr().String(), TLS: TLSNone, SendProxyProtocol: version}
			cfg.ApplyDefaults()
			if errs := cfg.Validate(); len(errs) > 0 {
				t.Fatal(errs)
			}
			client := &net.TCPAddr{IP: net.ParseIP("192.0.2.7"), Port: 40123}
			conn, err := dialConn(context.Background(), Target{Address: cfg.Address, Config: cfg, ClientAddr: client}, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			select {
			case h := <-got:
				if h == nil || h.SourceAddr.String() != client.String() || int(h.Version) != int(version[1]-'0') {
					t.Fatalf("backend read header %+v, want %s from %v", h, version, client)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("no PROXY header arrived")
			}
		})
	}
}

func TestSendProxyProtocolValidated(t *testing.T) {
	cfg := &BackendConfig{Address: "127.0.0.1:143", SendProxyProtocol: "v3"}
	cfg.ApplyDefaults()
	if errs := cfg.Validate(); len(errs) != 1 {
		t.Fatalf("send_proxy_protocol v3: %v", errs)
	}
}
