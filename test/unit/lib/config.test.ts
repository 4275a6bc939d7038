import { kafkaConfigShape, kafkaTlsOf, loadConfig, workerConfigShape, workerRetryPolicyOf } from '../../../lib/config.ts';
import { DEFAULT_RETRY_POLICY } from '../../../lib/runtime/retry.ts';

const PEM = (label: string) => `-----BEGIN ${label}-----\nAAAA\n-----END ${label}-----\n`;
const load = (env: Record<string, string>) => loadConfig(kafkaConfigShape, { KAFKA_BROKERS: 'kafka:9093', ...env });

describe('Kafka connection settings', () => {
  it('defaults to ssl, which needs the client certificate and key', () => {
    const config = load({});
    expect(config.KAFKA_SECURITY_PROTOCOL).toBe('ssl');
    expect(() => kafkaTlsOf(config)).toThrow(/KAFKA_SSL_CERT, KAFKA_SSL_KEY: required with KAFKA_SECURITY_PROTOCOL=ssl.*KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE/);
  });

  it('gives the CA, certificate and key for ssl (no CA: the system CAs)', () => {
    expect(kafkaTlsOf(load({ KAFKA_SSL_CA: PEM('CERTIFICATE'), KAFKA_SSL_CERT: PEM('CERTIFICATE'), KAFKA_SSL_KEY: PEM('PRIVATE KEY') }))).toEqual({
      ca: PEM('CERTIFICATE').trim(),
      cert: PEM('CERTIFICATE').trim(),
      key: PEM('PRIVATE KEY').trim(),
    });
    expect(kafkaTlsOf(load({ KAFKA_SSL_CERT: PEM('CERTIFICATE'), KAFKA_SSL_KEY: PEM('PRIVATE KEY') }))?.ca).toBeUndefined();
  });

  it('refuses TLS material with plaintext (a half-applied configuration)', () => {
    expect(kafkaTlsOf(load({ KAFKA_SECURITY_PROTOCOL: 'plaintext' }))).toBeUndefined();
    expect(() => kafkaTlsOf(load({ KAFKA_SECURITY_PROTOCOL: 'plaintext', KAFKA_SSL_KEY: PEM('PRIVATE KEY') }))).toThrow(/plaintext, but KAFKA_SSL_KEY is set/);
  });

  it('names a value that is not PEM without echoing it, and an unknown protocol', () => {
    let message = '';
    try {
      load({ KAFKA_SSL_KEY: 'secret-not-pem', KAFKA_SECURITY_PROTOCOL: 'sasl' });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/KAFKA_SSL_KEY: expected the client's private key in PEM \(or set KAFKA_SSL_KEY_FILE/);
    expect(message).toMatch(/KAFKA_SECURITY_PROTOCOL: expected ssl .* or plaintext/);
    expect(message).not.toContain('secret-not-pem');
  });
});

describe('worker retry settings', () => {
  const policyOf = (env: Record<string, string>) => workerRetryPolicyOf(loadConfig(workerConfigShape, env));

  it("defaults to the runtime's own policy", () => {
    expect(policyOf({})).toEqual(DEFAULT_RETRY_POLICY);
  });

  it('reads each setting', () => {
    expect(
      policyOf({ WORKER_MAX_ATTEMPTS: '8', WORKER_RETRY_BASE_DELAY_MS: '500', WORKER_RETRY_MAX_DELAY_MS: '60000', WORKER_UNAVAILABLE_MAX_DELAY_MS: '2000' }),
    ).toEqual({ maxAttempts: 8, initialDelayMs: 500, multiplier: DEFAULT_RETRY_POLICY.multiplier, maxDelayMs: 60_000, unavailableMaxDelayMs: 2_000 });
  });

  it('names each value that is not a positive integer', () => {
    let message = '';
    try {
      policyOf({ WORKER_MAX_ATTEMPTS: '0', WORKER_RETRY_BASE_DELAY_MS: 'soon', WORKER_UNAVAILABLE_MAX_DELAY_MS: '1.5' });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/WORKER_MAX_ATTEMPTS: expected a positive integer \(got "0"\)/);
    expect(message).toMatch(/WORKER_RETRY_BASE_DELAY_MS: .* \(got "soon"\)/);
    expect(message).toMatch(/WORKER_UNAVAILABLE_MAX_DELAY_MS: expected an integer \(got "1.5"\)/);
  });

  it('refuses a cap below the first delay', () => {
    expect(() => policyOf({ WORKER_RETRY_BASE_DELAY_MS: '5000', WORKER_UNAVAILABLE_MAX_DELAY_MS: '1000' })).toThrow(
      /WORKER_UNAVAILABLE_MAX_DELAY_MS: expected at least WORKER_RETRY_BASE_DELAY_MS \(5000\) \(got 1000\)/,
    );
  });
});
