// A long-running service on the AWS SDK for Go v2, as a consumer of the operator's Secret: it
// loads its configuration once (config.LoadDefaultConfig: AWS_CONFIG_FILE with the Secret's
// credential_process, or AWS_CONTAINER_CREDENTIALS_FULL_URI of the credentials-endpoint sidecar)
// and calls sts:GetCallerIdentity every CONSUMER_INTERVAL_MS, leaving the refresh of its
// credentials entirely to the SDK. It stops by itself after CONSUMER_DURATION_S.
//
// One line per call on stdout: `<unix ms> ok` or `<unix ms> error <code>`; nothing secret.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

func envDuration(name string, fallback time.Duration, unit time.Duration) time.Duration {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return time.Duration(v) * unit
	}
	return fallback
}

func main() {
	interval := envDuration("CONSUMER_INTERVAL_MS", 3*time.Second, time.Millisecond)
	duration := envDuration("CONSUMER_DURATION_S", 25*time.Minute, time.Second)
	ctx := context.Background()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "loading the SDK configuration: %v\n", err)
		os.Exit(2)
	}
	client := sts.NewFromConfig(cfg)
	fmt.Fprintln(os.Stderr, "go-v2 consumer started")
	deadline := time.Now().Add(duration)
	for time.Now().Before(deadline) {
		callCtx, cancel := context.WithTimeout(ctx, 20*time.Second)
		_, err := client.GetCallerIdentity(callCtx, &sts.GetCallerIdentityInput{})
		cancel()
		now := time.Now().UnixMilli()
		if err == nil {
			fmt.Printf("%d ok\n", now)
		} else {
			code := "Unknown"
			var apiErr smithy.APIError
			if errors.As(err, &apiErr) {
				code = apiErr.ErrorCode()
			}
			fmt.Printf("%d error %s\n", now, code)
			fmt.Fprintf(os.Stderr, "%d %v\n", now, err)
		}
		time.Sleep(interval)
	}
}
