package io.tinymodelserver.tms.client;

import io.tinymodelserver.tms.v1.GetWorkerInfoResponse;
import java.util.List;

/**
 * One worker process of a server, as its {@code GetWorkerInfo} described it. Workers are keyed by
 * {@link #key()} (instance id and pid), so equal pids on two hosts never collide.
 */
public record Worker(
    String instanceId, long pid, int workerIndex, int workerCount, List<String> models) {

  public Worker {
    models = List.copyOf(models);
  }

  static Worker of(GetWorkerInfoResponse info) {
    return new Worker(
        info.getInstanceId(),
        info.getPid(),
        info.getWorkerIndex(),
        info.getWorkerCount(),
        info.getModelsList());
  }

  /** Whether this worker serves {@code model} ("" or an empty model list: any model). */
  public boolean has(String model) {
    return model.isEmpty() || models.isEmpty() || models.contains(model);
  }

  /** {@code <instance id>/<pid>}, as the server's {@code tms-worker} trailer names it. */
  public String key() {
    return instanceId + "/" + pid;
  }
}
