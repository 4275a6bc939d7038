import type { Metrics } from '../metrics.ts';
import type { Signer } from './signer.ts';

export type SigningMetrics = Pick<Metrics, 'signingOperations' | 'signingSeconds' | 'signingKeyLastRotation'>;

/**
 * `signer` counting its signatures (`agent_manager_signing_operations_total{result}`, and their
 * duration) and setting the time of its last successful rotation.
 */
export function instrumentSigner(signer: Signer, metrics: SigningMetrics): Signer {
  return {
    keyId: signer.keyId,
    kind: signer.kind,
    currentVersion: () => signer.currentVersion(),
    publicKeys: () => signer.publicKeys(),
    async sign(data, version) {
      const stop = metrics.signingSeconds.startTimer();
      try {
        const envelope = await signer.sign(data, version);
        metrics.signingOperations.inc({ result: 'ok' });
        return envelope;
      } catch (error) {
        metrics.signingOperations.inc({ result: 'failed' });
        throw error;
      } finally {
        stop();
      }
    },
    async rotate() {
      // Failures are counted by whoever asked for the rotation (the schedule in ./rotation.ts), once.
      const version = await signer.rotate();
      metrics.signingKeyLastRotation.set(Date.now() / 1000);
      return version;
    },
  };
}
