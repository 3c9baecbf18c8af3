// bench/probe Go peer: N HTTP probe targets at a fixed period with the
// standard library's net/http as kubelet's HTTP prober sets it up: keep-alives
// and compression off, no proxy, TLS not verified, 1 s client timeout, at most
// 10 KiB of body read, User-Agent kube-probe and Accept */*.
//
//	goprober URL N SECONDS WARMUP [NADDR]
//
// NADDR: target i probes 127.0.0.<1 + i % NADDR> in place of the URL's 127.0.0.1.
//
// Prints one line: RESULT peer=go n=.. probes_per_s=.. ...
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

func cpuSeconds() float64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
}

func statusMB(key string) float64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, key+":") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseFloat(f[1], 64)
			return kb / 1024
		}
	}
	return 0
}

func main() {
	url := os.Args[1]
	n, _ := strconv.Atoi(os.Args[2])
	secs, _ := strconv.ParseFloat(os.Args[3], 64)
	warmup, _ := strconv.ParseFloat(os.Args[4], 64)
	naddr := 1
	if len(os.Args) > 5 {
		naddr, _ = strconv.Atoi(os.Args[5])
	}
	period := time.Second

	transport := &http.Transport{
		TLSClientConfig:    &tls.Config{InsecureSkipVerify: true},
		DisableKeepAlives:  true,
		DisableCompression: true,
		Proxy:              nil,
	}
	client := &http.Client{Timeout: time.Second, Transport: transport}

	start := time.Now().Add(200 * time.Millisecond)
	tMeasure := start.Add(time.Duration(warmup * float64(time.Second)))
	tEnd := tMeasure.Add(time.Duration(secs * float64(time.Second)))

	var mu sync.Mutex
	var lags []float64
	ok, fail := 0, 0
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		target := strings.Replace(url, "127.0.0.1", fmt.Sprintf("127.0.0.%d", 1+i%naddr), 1)
		go func(i int) {
			defer wg.Done()
			next := start.Add(period * time.Duration(i) / time.Duration(n))
			for {
				if d := time.Until(next); d > 0 {
					time.Sleep(d)
				}
				now := time.Now()
				if !next.Before(tEnd) {
					return
				}
				good := false
				req, err := http.NewRequest("GET", target, nil)
				if err == nil {
					req.Header.Set("User-Agent", "kube-probe/1.33")
					req.Header.Set("Accept", "*/*")
					resp, err := client.Do(req)
					if err == nil {
						io.ReadAll(io.LimitReader(resp.Body, 10*1024))
						resp.Body.Close()
						good = resp.StatusCode >= 200 && resp.StatusCode < 400
					}
				}
				if !next.Before(tMeasure) {
					mu.Lock()
					lags = append(lags, now.Sub(next).Seconds())
					if good {
						ok++
					} else {
						fail++
					}
					mu.Unlock()
				}
				next = next.Add(period)
				for next.Before(time.Now().Add(-period)) {
					next = next.Add(period)
				}
			}
		}(i)
	}
	time.Sleep(time.Until(tMeasure))
	cpu0 := cpuSeconds()
	m0 := time.Now()
	time.Sleep(time.Until(tEnd))
	cpu := cpuSeconds() - cpu0
	wall := time.Since(m0).Seconds()
	wg.Wait()
	sort.Float64s(lags)
	pct := func(p float64) float64 {
		if len(lags) == 0 {
			return 0
		}
		i := int(float64(len(lags))*p+0.999999) - 1
		if i < 0 {
			i = 0
		}
		return lags[i] * 1000
	}
	probes := ok + fail
	fmt.Printf("RESULT peer=go n=%d probes_per_s=%.0f ok=%d fail=%d missed=0 lag_p50_ms=%.2f lag_p99_ms=%.2f cpu_us_per_probe=%.1f cpu_cores=%.2f rss_mb=%.1f\n",
		n, float64(probes)/wall, ok, fail, pct(0.5), pct(0.99), cpu/float64(probes)*1e6, cpu/wall, statusMB("VmHWM"))
}
